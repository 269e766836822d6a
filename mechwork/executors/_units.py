"""Units of work and the worker-side context every executor gives them.

A :class:`Unit` is a module-level function plus a payload: ``fn(context, payload) -> result``. The
function is sent by reference (its module and name), so it must be importable on the worker; the
payload and the result travel through the executor (Ray's object store on a cluster: tensors, not files
on a shared disk). A unit that needs a model names it with a :class:`ModelSpec`, and the worker loads
each spec once and keeps it for every later unit (``context.model(spec)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class UnitFailed(RuntimeError):
    """A unit of work raised on a worker; the message names the unit and the original error."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a ``mechwork.load`` spec, the dtype, the kind of device the driver's model is on
    (``"cpu"`` or ``"cuda"``: a worker loads onto its own device of that kind) and, when known, the weights'
    hash (a worker whose weights differ refuses to run: results would not be those of the driver's model)."""

    spec: str
    dtype: str = "float32"
    weights: str | None = None
    device: str = "cpu"

    @classmethod
    def of(cls, model, *, check_weights: bool = True) -> ModelSpec:
        """The spec a loaded model came from (``mechwork.load`` records it); refuses a model built in memory."""
        from ..models import weights_hash

        spec = getattr(model, "mechwork_spec", None)
        if spec is None:
            raise ValueError("this model was not loaded with mechwork.load, so workers cannot load the same one; "
                             "save it with save_pretrained(DIR) and load it with mechwork.load(DIR)")
        parameter = next(model.parameters())
        dtype = str(parameter.dtype).removeprefix("torch.")
        return cls(spec, dtype, weights_hash(model) if check_weights else None, parameter.device.type)


@dataclass(frozen=True)
class Unit:
    """One independent piece of work, identified by a stable ``key`` (results are keyed by it, so the
    order in which units finish never changes the combined result)."""

    key: str
    fn: Callable[[WorkerContext, Any], Any]
    payload: Any = None
    model: ModelSpec | None = None  # the model it loads: lets the scheduler send it where that model is


class WorkerContext:
    """Per-worker state: the models this worker has loaded, each loaded once."""

    def __init__(self) -> None:
        self._models: dict[ModelSpec, Any] = {}

    def model(self, spec: ModelSpec | str):
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
        if spec not in self._models:
            self._models[spec] = _load_checked(spec)
        return self._models[spec]

    @property
    def loaded(self) -> tuple[ModelSpec, ...]:
        return tuple(self._models)


def _load_checked(spec: ModelSpec):
    from ..models import load, weights_hash

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise UnitFailed(f"the driver's model {spec.spec!r} is on a CUDA GPU and this worker sees none: give "
                         "the workers GPUs (RayExecutor(gpus_per_worker=1), or --gpus-per-worker 1), or run the "
                         "driver's model on the CPU")
    model = load(spec.spec, dtype=getattr(torch, spec.dtype), device=spec.device)
    if spec.weights is not None and weights_hash(model) != spec.weights:
        raise UnitFailed(f"{spec.spec!r} loaded on this worker has different weights from the driver's model "
                         f"(weights hash {weights_hash(model)[:12]} vs {spec.weights[:12]}); a checkpoint folder "
                         "must hold the same files on every machine of the cluster")
    return model


def run_unit(context: WorkerContext, unit: Unit) -> Any:
    try:
        return unit.fn(context, unit.payload)
    except UnitFailed:
        raise
    except Exception as exc:  # name the unit; keep the original as the cause
        raise UnitFailed(f"unit {unit.key!r} failed: {type(exc).__name__}: {exc}") from exc
