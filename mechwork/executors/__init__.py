"""Where independent units of work run: in this process (the default) or on Ray actors.

Commands and functions that can spread their work take ``executor=``: ``None`` (in-process), an
:class:`Executor`, ``"ray"`` (a local Ray instance) or ``"ray:ADDRESS"`` (a cluster). Results are the
same whichever runs them: units are keyed, and combined in key order, not arrival order.

Sits just above the models layer (workers load models with ``mechwork.load``); every layer above may
use it. Ray itself is imported only by :class:`RayExecutor`.
"""

from __future__ import annotations

from ._local import Executor, LocalExecutor
from ._units import ModelSpec, Unit, UnitFailed, WorkerContext


def executor_from(value: Executor | str | None, *, workers: int | None = None, gpus_per_worker: float | int = 0
                  ) -> Executor:
    """``None`` -> in-process; ``"ray"`` -> local Ray; ``"ray:ADDRESS"`` -> that cluster; an Executor as is."""
    if value is None:
        return LocalExecutor()
    if isinstance(value, Executor):
        return value
    if isinstance(value, str) and (value == "ray" or value.startswith("ray:")):
        from ._ray import RayExecutor

        address = value[len("ray:"):] or None
        return RayExecutor(address, workers=workers, gpus_per_worker=gpus_per_worker)
    raise ValueError(f"executor must be None, an Executor, 'ray' or 'ray:ADDRESS', got {value!r}")


def __getattr__(name: str):
    if name == "RayExecutor":  # lazily: importing mechwork.executors never imports Ray
        from ._ray import RayExecutor

        return RayExecutor
    raise AttributeError(name)


__all__ = ["Executor", "LocalExecutor", "ModelSpec", "RayExecutor", "Unit", "UnitFailed", "WorkerContext",
           "executor_from"]
