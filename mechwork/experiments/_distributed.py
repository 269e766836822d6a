"""Experiment steps as units of work: independent steps run at once on an executor's workers.

A step depends on the step whose output it reads (``circuit = "NAME"`` in verify and resample);
every other pair of steps is independent. Steps run in waves: each wave holds the steps whose
dependencies are finished. A worker runs a step into its own scratch folder, with the files of the
steps it depends on copied in, and sends back the files it wrote as bytes; the driver writes them
(each atomically) and records the step as done, so resume works exactly as for a local run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .._io import atomic_write_bytes
from ..executors import ModelSpec, Unit
from ._config import Experiment, Step
from ._steps import RUNNERS, Session


class _WorkerSession(Session):
    def __init__(self, experiment: Experiment, out: Path, model) -> None:
        super().__init__(experiment, out, progress=False)
        self.__dict__["model"] = model  # the cached_property's slot: the worker's already loaded model


def dependencies(step: Step) -> tuple[str, ...]:
    name = step.config.get("circuit")
    return (name,) if isinstance(name, str) else ()


def waves(steps: list[Step]) -> list[list[Step]]:
    """Steps grouped so that each depends only on steps of earlier waves (or on steps not being run)."""
    names = {s.name for s in steps}
    finished: set[str] = set()
    remaining, out = list(steps), []
    while remaining:
        wave = [s for s in remaining if all(d in finished or d not in names for d in dependencies(s))]
        if not wave:  # a cycle: the config check forbids it; run in file order rather than loop forever
            wave = remaining[:1]
        out.append(wave)
        finished |= {s.name for s in wave}
        remaining = [s for s in remaining if s not in wave]
    return out


def run_step_unit(context, payload: tuple[Experiment, Step, ModelSpec, dict[str, bytes]]) -> dict[str, bytes]:
    """Run one step on a worker; returns ``{path relative to the run folder: bytes}`` of what it wrote."""
    experiment, step, spec, inputs = payload
    with tempfile.TemporaryDirectory(prefix="mechwork-step-") as scratch:
        out = Path(scratch)
        for relative, data in inputs.items():
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(data)
        folder = out / step.name
        folder.mkdir(exist_ok=True)
        files = RUNNERS[step.kind](_WorkerSession(experiment, out, context.model(spec)), step, folder)
        return {str(f.relative_to(out)): f.read_bytes() for f in files}


def step_unit(experiment: Experiment, step: Step, out: Path, records: dict) -> Unit:
    """The unit for ``step``, carrying the files of the steps it reads (from ``records``, as written)."""
    inputs = {f: (out / f).read_bytes() for d in dependencies(step) for f in records.get(d, {}).get("files", [])}
    spec = ModelSpec(experiment.model["spec"])
    return Unit(step.name, run_step_unit, (experiment, step, spec, inputs), model=spec)


def write_step_files(out: Path, files: dict[str, bytes]) -> list[str]:
    for relative, data in files.items():
        atomic_write_bytes(out / relative, data)
    return list(files)
