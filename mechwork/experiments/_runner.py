"""``mechwork run EXPERIMENT.toml``: run the steps, record everything needed to repeat the run, resume.

The output folder holds ``experiment.toml`` (the file as run), ``run.json`` (the resolved
configuration, versions, and each step's status, fingerprint, time and files) and one folder per
step. A step is recorded as done only after all its files are written (each atomically), so an
interrupted run resumes at the first unfinished step; a finished step whose settings, model or task
changed since is run again.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm import tqdm

from .._io import atomic_write_json, atomic_write_text
from ._config import Experiment, parse_experiment
from ._steps import RUNNERS, Session

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunResult:
    out: Path
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    files: dict[str, list[str]]


def _versions() -> dict:
    return {"mechwork": version("mechwork"), "torch": torch.__version__, "python": platform.python_version(),
            "transformer_lens": version("transformer-lens"), "plotly": version("plotly")}


def _previous(out: Path) -> dict:
    try:
        return json.loads((out / RUN_FILE).read_text()).get("steps", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}  # no run yet, or a foreign file: every step runs


def _is_done(record: dict | None, fingerprint: str, out: Path) -> bool:
    return (record is not None and record.get("status") == "done" and record.get("fingerprint") == fingerprint
            and all((out / f).exists() for f in record.get("files", [])))


def _record(out: Path, experiment: Experiment, versions: dict, steps: dict) -> None:
    atomic_write_json(out / RUN_FILE, {
        "experiment": {"name": experiment.name, "file": str(experiment.path), "seed": experiment.seed,
                       "model": experiment.model, "task": experiment.task,
                       "steps": [{"kind": s.kind, "name": s.name, **s.config} for s in experiment.steps],
                       "outputs": experiment.outputs},
        "versions": versions,
        "steps": steps,
    })


def run_experiment(path: str | os.PathLike, out: str | os.PathLike | None = None, *, force: bool = False,
                   progress: bool = True) -> RunResult:
    """Run an experiment file into ``out`` (default ``runs/NAME``), skipping steps already done there."""
    experiment = parse_experiment(path)
    out = Path(out) if out is not None else Path("runs") / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "experiment.toml", experiment.text)
    session = Session(experiment, out, progress)
    records = {} if force else _previous(out)
    versions = _versions()
    steps: dict[str, dict] = {}
    ran, skipped = [], []
    bar = tqdm(experiment.steps, desc=experiment.name, unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step.name)
        fingerprint = step.fingerprint(experiment.context())
        if _is_done(records.get(step.name), fingerprint, out):
            steps[step.name] = records[step.name]
            skipped.append(step.name)
            continue
        steps[step.name] = {"kind": step.kind, "status": "running", "fingerprint": fingerprint}
        _record(out, experiment, versions, {**records, **steps})
        start = time.perf_counter()
        folder = out / step.name
        folder.mkdir(exist_ok=True)
        files = RUNNERS[step.kind](session, step, folder)
        steps[step.name] = {"kind": step.kind, "status": "done", "fingerprint": fingerprint,
                            "seconds": round(time.perf_counter() - start, 3),
                            "files": [str(f.relative_to(out)) for f in files]}
        _record(out, experiment, versions, {**records, **steps})
        ran.append(step.name)
    _record(out, experiment, versions, steps)  # drop records of steps no longer in the file
    return RunResult(out, tuple(ran), tuple(skipped), {k: v.get("files", []) for k, v in steps.items()})
