"""The executor interface, and the in-process one every command uses unless told otherwise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from ._units import Unit, WorkerContext, run_unit

OnDone = Callable[[str, Any], None]


class Executor(ABC):
    """Runs independent :class:`Unit` s and returns their results keyed by unit key.

    ``on_done(key, result)`` is called in the calling process as each unit finishes (in whatever order
    they finish): progress lines and resume files are written there, never on a worker.
    """

    workers: int = 1

    @abstractmethod
    def run(self, units: Sequence[Unit], *, on_done: OnDone | None = None) -> dict[str, Any]: ...

    def close(self) -> None:  # noqa: B027 - optional: in-process executors hold nothing to release
        """Release workers (nothing to release in-process)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_unique_keys(units: Sequence[Unit]) -> None:
    seen: set[str] = set()
    for unit in units:
        if unit.key in seen:
            raise ValueError(f"two units share the key {unit.key!r}; results are keyed by it")
        seen.add(unit.key)


class LocalExecutor(Executor):
    """One worker: this process, in order. Models a unit loads stay loaded for the next run."""

    def __init__(self) -> None:
        self.context = WorkerContext()

    def run(self, units: Sequence[Unit], *, on_done: OnDone | None = None) -> dict[str, Any]:
        check_unique_keys(units)
        results = {}
        for unit in units:
            results[unit.key] = run_unit(self.context, unit)
            if on_done is not None:
                on_done(unit.key, results[unit.key])
        return results
