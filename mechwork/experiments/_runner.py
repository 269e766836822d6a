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
                   progress: bool = True, executor=None) -> RunResult:
    """Run an experiment file into ``out`` (default ``runs/NAME``), skipping steps already done there.

    With ``executor`` (see :mod:`mechwork.executors`; ``"ray"`` for a local Ray instance), steps that do
    not read each other's output run at once on its workers; files and records are the same as a local run.
    """
    experiment = parse_experiment(path)
    out = Path(out) if out is not None else Path("runs") / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "experiment.toml", experiment.text)
    book = _Book(experiment, out, {} if force else _previous(out))
    todo = [step for step in experiment.steps if not book.skip(step)]
    if executor is None:
        _run_here(Session(experiment, out, progress), todo, book, progress)
    else:
        _run_on(executor, todo, book, progress)
    return book.finish()


class _Book:
    """The run's record (``run.json``): which steps are done, with their fingerprints and files."""

    def __init__(self, experiment: Experiment, out: Path, records: dict) -> None:
        self.experiment, self.out, self.records = experiment, out, records
        self.versions = _versions()
        self.steps: dict[str, dict] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def fingerprint(self, step) -> str:
        return step.fingerprint(self.experiment.context())

    def skip(self, step) -> bool:
        if _is_done(self.records.get(step.name), self.fingerprint(step), self.out):
            self.steps[step.name] = self.records[step.name]
            self.skipped.append(step.name)
            return True
        return False

    def _save(self) -> None:
        _record(self.out, self.experiment, self.versions, {**self.records, **self.steps})

    def started(self, step) -> None:
        self.steps[step.name] = {"kind": step.kind, "status": "running", "fingerprint": self.fingerprint(step)}
        self._save()

    def done(self, step, seconds: float, files: list[str]) -> None:
        self.steps[step.name] = {"kind": step.kind, "status": "done", "fingerprint": self.fingerprint(step),
                                 "seconds": round(seconds, 3), "files": files}
        self._save()
        self.ran.append(step.name)

    def finish(self) -> RunResult:
        ordered = {s.name: self.steps[s.name] for s in self.experiment.steps if s.name in self.steps}
        _record(self.out, self.experiment, self.versions, ordered)  # drop records of steps no longer in the file
        ran = tuple(s.name for s in self.experiment.steps if s.name in self.ran)
        return RunResult(self.out, ran, tuple(self.skipped), {k: v.get("files", []) for k, v in ordered.items()})


def _run_here(session: Session, todo: list, book: _Book, progress: bool) -> None:
    bar = tqdm(todo, desc=book.experiment.name, unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step.name)
        book.started(step)
        start = time.perf_counter()
        folder = book.out / step.name
        folder.mkdir(exist_ok=True)
        files = RUNNERS[step.kind](session, step, folder)
        book.done(step, time.perf_counter() - start, [str(f.relative_to(book.out)) for f in files])


def _run_on(executor, todo: list, book: _Book, progress: bool) -> None:
    from ..executors import executor_from
    from ._distributed import step_unit, waves, write_step_files

    runner = executor_from(executor)
    by_name = {step.name: step for step in todo}
    bar = tqdm(total=len(todo), desc=book.experiment.name, unit="step", disable=not progress)
    try:
        for wave in waves(todo):
            for step in wave:
                book.started(step)
            start = time.perf_counter()

            def done(name: str, files: dict, start=start) -> None:
                book.done(by_name[name], time.perf_counter() - start, write_step_files(book.out, files))
                bar.update(1)
                bar.set_postfix_str(name)

            runner.run([step_unit(book.experiment, s, book.out, {**book.records, **book.steps}) for s in wave],
                       on_done=done)
    finally:
        bar.close()
        if runner is not executor:
            runner.close()
