"""Reading a ``PROGRAM.py``: the RASP program, its vocabulary and its length, checked before compiling.

A program file defines ``program()`` (returns the RASP expression), ``VOCAB`` (the input tokens),
``MAX_SEQ_LEN`` (tokens after BOS) and optionally ``COMPILER_BOS`` (the BOS token's name, "BOS" if
absent) and ``CAUSAL_SEMANTICS``. Every problem is a :class:`TracrProgramError` that names the file.

The model is causal: position p sees tokens 0 .. p only. By default a program must mean the same under
that constraint as on the whole input (RASP on x and RASP on x's prefix agree at p), so a sort or a
whole-input histogram is refused. A program written to be read with causal selectors (a histogram of
the prefix) sets ``CAUSAL_SEMANTICS = True`` and is checked against RASP's causal evaluator instead.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BOS = "BOS"
INSTALL_HINT = "pip install mechwork[tracr]"


class TracrProgramError(ValueError):
    """A RASP program file mechwork cannot turn into a checkpoint; the message names the file."""


class TracrNotInstalledError(ImportError):
    """tracr (an optional extra) is missing."""


def require_tracr() -> None:
    """Fail with the install command when tracr is not importable."""
    try:
        import tracr.compiler.compiling  # noqa: F401
    except ImportError as err:
        raise TracrNotInstalledError(
            f"compiling RASP programs needs DeepMind's tracr, which is not installed ({err}); "
            f"install it with `{INSTALL_HINT}`"
        ) from err


@dataclass(frozen=True)
class TracrProgram:
    """A RASP program ready to compile: ``vocab`` is sorted by its string form, as the tokenizer orders it."""

    path: Path
    expr: Any  # a tracr.rasp.rasp.SOp
    vocab: tuple[Any, ...]
    max_seq_len: int
    bos: str
    causal_semantics: bool = False  # the program means what RASP with causal selectors computes

    @property
    def name(self) -> str:
        return self.path.stem


def load_program(path: str | Path) -> TracrProgram:
    """Import ``path`` and read its names; a missing or malformed name is a :class:`TracrProgramError`."""
    require_tracr()
    from tracr.rasp import rasp

    path = Path(path)
    if not path.is_file():
        raise TracrProgramError(f"{path}: no such program file")
    module = _import_file(path)
    missing = [name for name in ("program", "VOCAB", "MAX_SEQ_LEN") if not hasattr(module, name)]
    if missing:
        raise TracrProgramError(f"{path}: does not define {', '.join(missing)} (a program file defines program(), "
                                "VOCAB, MAX_SEQ_LEN and optionally COMPILER_BOS)")
    if not callable(module.program):
        raise TracrProgramError(f"{path}: program must be a function returning the RASP expression")
    try:
        expr = module.program()
    except Exception as err:
        raise TracrProgramError(f"{path}: program() raised {type(err).__name__}: {err}") from err
    if not isinstance(expr, rasp.SOp):
        raise TracrProgramError(f"{path}: program() returned {type(expr).__name__}, not a RASP SOp")
    bos = getattr(module, "COMPILER_BOS", DEFAULT_BOS)
    vocab = _checked_vocab(path, module.VOCAB, bos)
    max_len = module.MAX_SEQ_LEN
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise TracrProgramError(f"{path}: MAX_SEQ_LEN must be a positive int, got {max_len!r}")
    causal = getattr(module, "CAUSAL_SEMANTICS", False)
    if not isinstance(causal, bool):
        raise TracrProgramError(f"{path}: CAUSAL_SEMANTICS must be True or False, got {causal!r}")
    return TracrProgram(path=path, expr=expr, vocab=vocab, max_seq_len=max_len, bos=str(bos),
                        causal_semantics=causal)


def _import_file(path: Path):
    name = f"_mechwork_tracr_program_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TracrProgramError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise TracrProgramError(f"{path}: importing it raised {type(err).__name__}: {err}") from err
    finally:
        sys.modules.pop(name, None)
    return module


def _checked_vocab(path: Path, vocab: Any, bos: Any) -> tuple[Any, ...]:
    if not isinstance(vocab, (set, frozenset, list, tuple)) or not vocab:
        raise TracrProgramError(f"{path}: VOCAB must be a non-empty set, list or tuple of tokens, got {vocab!r}")
    words = [str(v) for v in vocab]
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise TracrProgramError(f"{path}: VOCAB tokens must be non-empty with no whitespace: {bad}")
    if len(set(words)) != len(words):
        raise TracrProgramError(f"{path}: VOCAB has tokens with the same text ({sorted(words)}); tokens are "
                                "written by their text")
    if str(bos) in words:
        raise TracrProgramError(f"{path}: COMPILER_BOS {bos!r} is also in VOCAB")
    return tuple(sorted(vocab, key=str))
