"""One registry of discovery methods, all with one signature:

    method(model, graph: Graph, task: DiscoveryTask, **options) -> EdgeScores
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._types import DiscoveryTask, EdgeScores


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[..., EdgeScores]
    summary: str
    options: dict  # option name -> default, documented in the method's module


_METHODS: dict[str, Method] = {}


def register_method(name: str, summary: str, **defaults) -> Callable:
    """Decorator: register a discovery function under ``name`` (a duplicate name is refused)."""

    def wrap(fn: Callable[..., EdgeScores]) -> Callable[..., EdgeScores]:
        if name in _METHODS:
            raise ValueError(f"a discovery method named {name!r} is already registered")
        _METHODS[name] = Method(name, fn, summary, dict(defaults))
        return fn

    return wrap


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_METHODS), n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownMethodError(f"no discovery method {name!r}.{hint} Known: {', '.join(sorted(_METHODS))}") from None


def methods() -> list[Method]:
    return [_METHODS[n] for n in sorted(_METHODS)]


def discover(model, graph, task: DiscoveryTask, method: str, *, batch_size: int | None = None,
             **options) -> EdgeScores:
    """Run a registered method by name; unknown options are refused with the list of known ones.

    ``batch_size`` (every method): run the task's prompts that many at a time (``None``: the task's own
    ``batch_size``); scores equal the one-batch scores up to rounding. Recorded in the options when set."""
    entry = get_method(method)
    unknown = set(options) - set(entry.options)
    if unknown:
        raise TypeError(f"{method}: unknown option(s) {sorted(unknown)}; it takes {sorted(entry.options)} "
                        "(and batch_size)")
    chosen = {**entry.options, **options}
    if batch_size is not None:
        task = dataclasses.replace(task, batch_size=batch_size)
    start = time.perf_counter()
    result = entry.run(model, graph, task, **chosen)
    elapsed = time.perf_counter() - start
    recorded = {**chosen, "batch_size": task.batch_size} if task.batch_size is not None else chosen
    return dataclasses.replace(result, method=method, options=_plain(recorded), seconds=elapsed)


def _plain(options: dict) -> dict:
    """Options as JSON-friendly values (callbacks and paths become strings)."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in options.items()}
