"""Experiment files (TOML): parsed once, checked key by key, compiled into a frozen plan.

An error names the file, the section or step, the key and what was expected, and suggests the
nearest known key for a misspelling. See ``examples/*.toml`` for complete files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ExperimentError
from ._prompts import check_prompt_lists, read_prompts_file

__all__ = ["Experiment", "ExperimentError", "Step", "parse_experiment"]

# key -> (type or tuple of types, required?, allowed values or None)
_Spec = dict[str, tuple[type | tuple[type, ...], bool, tuple | None]]

TOP: _Spec = {
    "name": (str, False, None), "description": (str, False, None), "seed": (int, False, None),
    "model": (dict, True, None), "task": (dict, True, None), "step": (list, True, None),
    "outputs": (dict, False, None),
}
MODEL: _Spec = {"spec": (str, True, None)}
TASK: _Spec = {
    "zoo": (str, False, None), "n_prompts": (int, False, None), "metric": (str, False, None),
    "clean": (list, False, None), "corrupted": (list, False, None), "answers": (list, False, None),
    "wrong": (list, False, None), "position": (int, False, None), "prompts": (str, False, None),
    "batch_size": (int, False, None),  # prompts every step runs at once (results do not depend on it)
    "builtin": (str, False, None), "seed": (int, False, None),  # a standard task (mechwork.tasks) and its seed
}
OUTPUTS: _Spec = {"static": (list, False, None)}
_COMMON: _Spec = {"kind": (str, True, None), "name": (str, False, None)}
STEPS: dict[str, _Spec] = {
    "patch": {"site": (str, False, None), "per_position": (bool, False, None),
              "direction": (str, False, ("denoise", "noise")), "method": (str, False, ("exact", "attribution"))},
    "attention": {"heads": (list, True, None), "prompt": (int, False, None)},
    "discover": {"method": (str, True, None), "options": (dict, False, None),
                 "select": (str, False, ("auto", "top-n", "threshold", "greedy")), "value": ((int, float), False, None),
                 "target": ((int, float), False, None), "ablation": (str, False, None),
                 "positions": (bool, False, None), "report": (bool, False, None)},
    "verify": {"circuit": (str, True, None), "tolerance": ((int, float), False, None),
               "faithfulness_only": (bool, False, None)},
    "resample": {"circuit": (str, True, None), "n_resamples": (int, False, None)},
}


def _check(table: Any, spec: _Spec, where: str) -> dict:
    if not isinstance(table, dict):
        raise ExperimentError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in spec:
            near = difflib.get_close_matches(key, list(spec), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known keys: {', '.join(sorted(spec))})"
            raise ExperimentError(f"{where}: unknown key {key!r}{hint}")
    for key, (kind, required, allowed) in spec.items():
        if key not in table:
            if required:
                raise ExperimentError(f"{where}: missing key {key!r}")
            continue
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ExperimentError(f"{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r}")
        if allowed is not None and value not in allowed:
            raise ExperimentError(f"{where}: key {key!r} is {value!r}; expected one of {', '.join(allowed)}")
    return table


# method options that change how a step runs, never what it computes: left out of its resume key
_HOW_IT_RUNS = frozenset({"executor", "progress"})


@dataclass(frozen=True)
class Step:
    kind: str
    name: str
    config: dict  # the step's table as written (minus kind and name)
    index: int

    def fingerprint(self, context: dict) -> str:
        """Changes whenever this step's settings, the model or the task change (resume key); not when only
        how it runs changes (a method's ``executor`` or ``progress`` option): the results are the same."""
        config = dict(self.config)
        if isinstance(config.get("options"), dict):
            config["options"] = {k: v for k, v in config["options"].items() if k not in _HOW_IT_RUNS}
        blob = json.dumps({"step": {"kind": self.kind, **config}, **context}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Experiment:
    path: Path
    text: str
    name: str
    seed: int
    model: dict
    task: dict
    steps: tuple[Step, ...]
    outputs: dict

    def context(self) -> dict:
        return {"model": self.model, "task": self.task, "seed": self.seed}

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


def _step(table: Any, index: int, where: str) -> Step:
    where_i = f"{where}: [[step]] #{index + 1}"
    if not isinstance(table, dict):
        raise ExperimentError(f"{where_i}: expected a table, got {type(table).__name__}")
    kind = table.get("kind")
    if kind not in STEPS:
        near = difflib.get_close_matches(str(kind), list(STEPS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ExperimentError(f"{where_i}: key 'kind' is {kind!r}; expected one of {', '.join(STEPS)}{hint}")
    name = table.get("name", f"{index + 1:02d}-{kind}")
    _check(table, {**_COMMON, **STEPS[kind]}, f"{where_i} ({name!r})")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ExperimentError(f"{where_i}: key 'name' {name!r} must be a plain folder name")
    return Step(kind, name, {k: v for k, v in table.items() if k not in ("kind", "name")}, index)


def _check_task(task: dict, where: str, folder: Path) -> None:
    """Check ``[task]``; a ``prompts = "FILE"`` (JSON or CSV, relative to the experiment) is read into the
    four prompt lists here, so every problem shows before anything runs."""
    _check(task, TASK, f"{where}: [task]")
    if task.get("batch_size", 1) < 1:
        raise ExperimentError(f"{where}: [task] key 'batch_size' must be a positive integer, got {task['batch_size']}")
    prompt_keys = ("clean", "corrupted", "answers", "wrong")
    given = [k for k in prompt_keys if k in task]
    sources = [name for name, present in (("zoo", "zoo" in task), ("builtin", "builtin" in task),
                                          ("prompts", "prompts" in task), ("prompt lists", bool(given))) if present]
    if len(sources) > 1:
        raise ExperimentError(f"{where}: [task] has {' and '.join(sources)}; use one")
    if "builtin" in task:
        _check_builtin(task, f"{where}: [task]")
    elif "seed" in task:
        raise ExperimentError(f"{where}: [task] key 'seed' is for builtin tasks; a zoo task draws its prompts with "
                              "the experiment's top-level seed")
    elif "prompts" in task:
        task.update(read_prompts_file(folder / task["prompts"]))
    elif "zoo" not in task and len(given) != len(prompt_keys):
        missing = [k for k in prompt_keys if k not in task]
        raise ExperimentError(f"{where}: [task] needs 'zoo = NAME', 'prompts = FILE' or all of clean, corrupted, "
                              f"answers, wrong (missing: {', '.join(missing)}); or 'builtin = TASK', a standard task "
                              "(ioi, greater-than, docstring, sva)")
    elif given:
        check_prompt_lists(task, f"{where}: [task]")


def _check_builtin(task: dict, where: str) -> None:
    """``builtin = TASK`` names a registered standard task (near matches suggested); ``n_prompts`` positive."""
    from ..tasks import TaskError, get_task

    try:
        get_task(task["builtin"])
    except TaskError as e:
        raise ExperimentError(f"{where}: key 'builtin': {e}") from None
    if task.get("n_prompts", 1) < 1:
        raise ExperimentError(f"{where}: key 'n_prompts' must be a positive integer, got {task['n_prompts']}")


def parse_experiment(path: str | os.PathLike) -> Experiment:
    """Read, check and compile an experiment file; every problem is an :class:`ExperimentError`."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ExperimentError(f"{where}: no such experiment file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{where}: not valid TOML: {e}") from None
    _check(data, TOP, where)
    _check(data["model"], MODEL, f"{where}: [model]")
    _check_task(data["task"], where, path.parent)
    _check(data.get("outputs", {}), OUTPUTS, f"{where}: [outputs]")
    if not data["step"]:
        raise ExperimentError(f"{where}: no [[step]] tables: nothing to run")
    steps = tuple(_step(t, i, where) for i, t in enumerate(data["step"]))
    names = [s.name for s in steps]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ExperimentError(f"{where}: step names must be unique; repeated: {', '.join(dupes)}")
    for s in steps:
        if s.kind in ("verify", "resample"):
            target = s.config["circuit"]
            if target not in names[: s.index] or steps[names.index(target)].kind != "discover":
                raise ExperimentError(f"{where}: [[step]] #{s.index + 1} ({s.name!r}): key 'circuit' must name an "
                                      f"earlier 'discover' step, got {target!r}")
    return Experiment(path, text, data.get("name", path.stem), data.get("seed", 0), data["model"], data["task"],
                      steps, data.get("outputs", {}))
