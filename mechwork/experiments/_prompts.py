"""Your own prompts: clean/corrupted pairs with single-token answers, from an experiment's ``[task]`` table
or a prompts file (JSON or CSV), tokenised by the model's own tokenizer.

A prompts file is either JSON — a list of ``{"clean", "corrupted", "answer", "wrong"}`` objects, or one
object of equal-length lists ``{"clean": [...], "corrupted": [...], "answers": [...], "wrong": [...]}`` as in
an experiment's ``[task]`` — or CSV with the header ``clean,corrupted,answer,wrong``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from ._errors import ExperimentError

_COLUMNS = ("clean", "corrupted", "answer", "wrong")
_LISTS = ("clean", "corrupted", "answers", "wrong")


def _from_rows(rows: list, where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {key: [] for key in _LISTS}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ExperimentError(f"{where}: prompt {i + 1} must be an object with keys {', '.join(_COLUMNS)}")
        missing = [c for c in _COLUMNS if not isinstance(row.get(c), str) or not row.get(c)]
        if missing:
            raise ExperimentError(f"{where}: prompt {i + 1} lacks a non-empty string for {', '.join(missing)}")
        for column, key in zip(_COLUMNS, _LISTS, strict=True):
            out[key].append(row[column])
    return out


def check_prompt_lists(task: dict, where: str) -> dict[str, list[str]]:
    """``task``'s clean/corrupted/answers/wrong: lists of strings, all the same length and not empty."""
    for key in _LISTS:
        values = task.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ExperimentError(f"{where}: {key!r} must be a non-empty list of strings")
    lengths = {key: len(task[key]) for key in _LISTS}
    if len(set(lengths.values())) != 1:
        raise ExperimentError(f"{where}: clean, corrupted, answers and wrong must be equally long, got {lengths}")
    return {key: list(task[key]) for key in _LISTS}


def read_prompts_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """The four prompt lists of a JSON or CSV prompts file (see the module docstring), with errors that
    name the file and the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExperimentError(f"{path}: cannot read the prompts file ({e.strerror})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or set(_COLUMNS) - set(reader.fieldnames):
            raise ExperimentError(f"{path}: a CSV prompts file needs the header {','.join(_COLUMNS)}, "
                                  f"got {','.join(reader.fieldnames or [])!r}")
        return _from_rows(list(reader), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExperimentError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if isinstance(data, list):
        return _from_rows(data, str(path))
    if isinstance(data, dict):
        return check_prompt_lists(data, str(path))
    raise ExperimentError(f"{path}: expected a list of prompts or an object of lists, got {type(data).__name__}")


class PromptTask:
    """Task data from prompt strings: each clean/corrupted pair the same number of tokens, single-token
    answers (the ``TaskData`` fields discovery and patching read)."""

    def __init__(self, model, task: dict, where: str):
        tokenize = model.to_tokens
        for side in ("clean", "corrupted"):
            _check_one_length(tokenize, task[side], side, where)
        self.clean, self.corrupted = tokenize(task["clean"]), tokenize(task["corrupted"])
        if self.clean.shape != self.corrupted.shape:
            raise ExperimentError(f"{where}: clean and corrupted prompts tokenise to different shapes "
                                  f"{tuple(self.clean.shape)} and {tuple(self.corrupted.shape)}; make each pair "
                                  "the same number of tokens")
        self.answers = torch.tensor([self._single(model, a, where) for a in task["answers"]])
        self.wrong = torch.tensor([self._single(model, a, where) for a in task["wrong"]])
        self.position = task.get("position", -1)

    @staticmethod
    def _single(model, text: str, where: str) -> int:
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ExperimentError(f"{where}: answer {text!r} is {len(ids)} tokens; answers must be one token")
        return ids[0]


def _check_one_length(tokenize, prompts: list[str], side: str, where: str) -> None:
    """Every prompt the same number of tokens: a batch pads shorter ones, and the metric reads one position
    for all, so a shorter prompt would be scored on padding."""
    lengths = [tokenize(p).shape[-1] for p in prompts]
    if len(set(lengths)) > 1:
        short = min(range(len(lengths)), key=lengths.__getitem__)
        long = max(range(len(lengths)), key=lengths.__getitem__)
        raise ExperimentError(f"{where}: {side} prompts tokenise to different lengths ({side} #{short}: "
                              f"{lengths[short]} tokens, #{long}: {lengths[long]}); the metric reads one position "
                              "for every prompt, so make all prompts the same number of tokens")


def builtin_task(model, task: dict, default_seed: int, where: str) -> PromptTask:
    """``[task] builtin = NAME``: the standard task's prompt pairs for the model's tokenizer (``n_prompts``,
    default 32; ``seed``, default the experiment's), tokenised like any other prompts."""
    from ..tasks import TaskError, generate

    try:
        prompts = generate(task["builtin"], model, task.get("n_prompts", 32), task.get("seed", default_seed))
    except TaskError as e:
        raise ExperimentError(f"{where}: [task] builtin {task['builtin']!r}: {e}") from None
    return PromptTask(model, prompts.lists(), where)


def builtin_metric(task: dict) -> str | None:
    """The default metric of ``[task]``'s builtin task (its paper's), or None without one."""
    from ..tasks import get_task

    return get_task(task["builtin"]).metric if "builtin" in task else None
