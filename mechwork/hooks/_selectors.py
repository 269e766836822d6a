"""One typed hook selector, normalised in one place and checked against the model once.

A selector is built from a hook name, a glob (``"blocks.*.attn.hook_z"``), a list of those, or a
predicate over names; :meth:`HookSelector.resolve` turns it into the model's concrete hook names, or
raises :class:`UnknownHookError` naming the closest real hooks.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SelectorLike = "str | Iterable[str] | Callable[[str], bool] | HookSelector"


class UnknownHookError(KeyError):
    """A hook name or pattern matched nothing on the model."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class HookSelector:
    patterns: tuple[str, ...] = ()
    predicate: Callable[[str], bool] | None = None

    @classmethod
    def of(cls, spec: SelectorLike) -> HookSelector:
        if isinstance(spec, HookSelector):
            return spec
        if isinstance(spec, str):
            return cls(patterns=(spec,))
        if callable(spec):
            return cls(predicate=spec)
        patterns = tuple(spec)
        if not all(isinstance(p, str) for p in patterns):
            raise TypeError("a hook selector list must contain only hook names or glob patterns")
        if not patterns:
            raise ValueError("empty hook selector: name at least one hook")
        return cls(patterns=patterns)

    def resolve(self, model) -> tuple[str, ...]:
        """Concrete hook names on ``model``, in model order (patterns first-come for exact names)."""
        available = hook_names(model)
        if self.predicate is not None:
            chosen = [n for n in available if self.predicate(n)]
            if not chosen:
                raise UnknownHookError("the hook predicate matched no hook on this model")
            return tuple(chosen)
        chosen: list[str] = []
        index = set(available)
        for pattern in self.patterns:
            matches = _match(pattern, available, index)
            if not matches:
                raise UnknownHookError(_unknown_message(pattern, available))
            chosen.extend(m for m in matches if m not in chosen)
        return tuple(chosen)


# The bridge rebuilds hook_dict (with aliases) on every access, which costs tens of milliseconds on
# GPT-2 small, so names are listed once per flag state and kept on the model itself (not in a
# module-global table keyed by object identity): (flag state, names).
_NAMES_ATTRIBUTE = "_mechwork_hook_names"


def _flag_state(model) -> tuple:
    cfg = model.cfg
    return tuple(bool(getattr(cfg, f, False)) for f in ("use_attn_result", "use_split_qkv_input",
                                                        "use_hook_mlp_in", "use_attn_in"))


def hook_names(model) -> list[str]:
    """Hook names usable now (hooks gated behind an off bridge flag, such as hook_attn_in, are left out)."""
    state = _flag_state(model)
    cached = model.__dict__.get(_NAMES_ATTRIBUTE)
    if cached is not None and cached[0] == state:
        return list(cached[1])
    hook_dict = model.hook_dict
    gated = getattr(model, "_gated_hook_reason", None)
    names = [n for n, point in hook_dict.items() if gated is None or gated(point.name or n) is None]
    model.__dict__[_NAMES_ATTRIBUTE] = (state, tuple(names))
    return names


def _match(pattern: str, available: list[str], index: set[str]) -> list[str]:
    if any(ch in pattern for ch in "*?["):
        return [n for n in available if fnmatch.fnmatchcase(n, pattern)]
    return [pattern] if pattern in index else []


def _unknown_message(pattern: str, available: Iterable[str]) -> str:
    names = list(available)
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"no hook named {pattern!r} on this model.{hint} (mechwork.hooks.hook_names(model) lists all {len(names)})"


def resolve_hook(model, name: str) -> str:
    """Check one exact hook name."""
    if name not in set(hook_names(model)) and name not in model.hook_dict:
        raise UnknownHookError(_unknown_message(name, hook_names(model)))
    return name
