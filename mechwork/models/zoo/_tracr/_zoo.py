"""The built-in tracr programs as zoo entries (kind "compiled"), registered without importing tracr.

Each file in ``tracr_programs/`` is the entry ``tracr_<stem>``. Building it compiles the program and
writes the verified checkpoint (tracr needed, once); its ground truth and its task's prompts come from
the checkpoint's ``tracr.json``, so a built entry needs no tracr afterwards. The cache key covers the
program file's text (in the recipe) and the importer's modules (the builder's module and what it imports).
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._registry import ZooEntry
from .._types import CircuitGroundTruth, Task, TaskData
from ._build import read_record, write_checkpoint
from ._program import require_tracr

PROGRAMS_DIR = Path(__file__).resolve().parent.parent / "tracr_programs"
PREFIX = "tracr_"
NUMERICAL_MIN_GAP = 1e-3  # corrupted prompts change a numerical output by at least this


def program_files() -> list[Path]:
    return sorted(p for p in PROGRAMS_DIR.glob("*.py") if not p.name.startswith("_"))


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or path.stem
    return "tracr: " + doc.strip().split("\n\n")[0].replace("\n", " ")


def _builder(path: Path) -> Callable[[Path], dict[str, Any]]:
    def build_compiled(folder: Path) -> dict[str, Any]:
        require_tracr()
        return write_checkpoint(path, folder)

    return build_compiled


def _record(name: str) -> dict[str, Any]:
    from .._registry import get_entry
    from .._store import ensure_built

    return read_record(ensure_built(get_entry(name)))


def ground_truth_of(record: dict[str, Any]) -> CircuitGroundTruth:
    gt = record["ground_truth"]
    return CircuitGroundTruth(nodes=frozenset(gt["nodes"]), edges=frozenset(gt["edges"]),
                              structural_edges=frozenset(gt["structural_edges"]), notes=gt["notes"])


def task_data_from_record(record: dict[str, Any], n: int, seed: int) -> TaskData:
    """Clean prompts drawn from the checked inputs whose last output is decided; each corrupted prompt is
    another checked input whose output at the last position differs. Categorical: answers and wrong are the
    output-value tokens. Numerical: the answer is ``<value>`` and wrong is BOS (logit 0), so the logit
    difference is the program's value; clean outputs lie above the median of the checked outputs and
    corrupted ones below it by at least ``NUMERICAL_MIN_GAP``."""
    vocab = record["tokens"]
    inputs, outputs = record["samples"]["inputs"], record["samples"]["outputs"]
    usable = [i for i, out in enumerate(outputs) if out is not None]
    rng = np.random.default_rng(seed)
    if record["categorical"]:
        clean_idx = rng.choice(usable, size=n)
        corrupt_idx = [_different(rng, usable, outputs, int(i)) for i in clean_idx]
    else:  # above the median vs below it, so the mean logit difference separates clean from corrupted
        clean_idx, corrupt_idx = _split_at_median(rng, usable, outputs, n)

    def tokens(rows) -> torch.Tensor:
        return torch.tensor([[0, *(vocab.index(t) for t in inputs[i])] for i in rows], dtype=torch.long)

    if record["categorical"]:
        answers = [vocab.index(outputs[i]) for i in clean_idx]
        wrong = [vocab.index(outputs[i]) for i in corrupt_idx]
    else:
        answers, wrong = [vocab.index(record["output_tokens"][0])] * n, [0] * n
    return TaskData(clean=tokens(clean_idx), corrupted=tokens(corrupt_idx), answers=torch.tensor(answers),
                    wrong=torch.tensor(wrong), position=-1)


def _split_at_median(rng: np.random.Generator, usable: list[int], outputs: list, n: int):
    median = float(np.median([outputs[i] for i in usable]))
    high = [i for i in usable if outputs[i] > median]
    low = [i for i in usable if outputs[i] < median]
    if not high or not low or max(outputs[i] for i in high) - min(outputs[i] for i in low) < NUMERICAL_MIN_GAP:
        raise ValueError("the checked inputs all give (nearly) one output at the last position: no corrupted "
                         "prompt can change it")
    return rng.choice(high, size=n), rng.choice(low, size=n)


def _different(rng: np.random.Generator, usable: list[int], outputs: list, i: int) -> int:
    others = [j for j in usable if outputs[j] != outputs[i]]
    if not others:
        raise ValueError(f"every checked input gives output {outputs[i]!r} at the last position: no corrupted "
                         "prompt can change it")
    return int(rng.choice(others))


def entry_for(path: Path) -> ZooEntry:
    name = PREFIX + path.stem
    task = Task(
        name=name,
        description=(f"The RASP program {path.stem} (compiled by tracr) read at the last position; corrupted "
                     "prompts are other random inputs with a different output there. Metric: logit difference "
                     "(categorical: clean minus corrupted output token; numerical: the value itself)."),
        make=lambda n, seed: task_data_from_record(_record(name), n, seed),
    )
    return ZooEntry(
        name=name, summary=_summary(path), kind="compiled", builder=_builder(path), task=task,
        ground_truth=lambda: ground_truth_of(_record(name)), declared_ground_truth_kind="circuit",
        recipe={"program": path.name, "program_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
    )


def tracr_entries() -> list[ZooEntry]:
    return [entry_for(p) for p in program_files()]
