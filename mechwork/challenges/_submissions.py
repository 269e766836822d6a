"""Reading submissions. Every problem becomes a :class:`SubmissionError` that says what and where.

A submitted Python program is untrusted code: it runs in a separate, isolated interpreter
(``python -I``, empty working folder, CPU-time and memory limits) under a wall-clock time limit,
and only its JSON answer comes back.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .._io import read_json as read_json_file
from ._types import SubmissionError

P = 113
MEMORY_LIMIT = 2 * 1024**3

# Runs in the child: import the file, call label(a, b) on every input, print one JSON line.
_RUNNER = r"""
import json, runpy, sys
P = int(sys.argv[2])
def describe(e):
    if isinstance(e, SyntaxError):
        return f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    return f"{type(e).__name__}: {e}"
try:
    namespace = runpy.run_path(sys.argv[1], run_name="submission")
except BaseException as e:
    print(json.dumps({"error": "importing the file raised " + describe(e)}))
    sys.exit(0)
fn = namespace.get("label")
if not callable(fn):
    print(json.dumps({"error": "the file defines no function label(a, b)"}))
    sys.exit(0)
table = []
for a in range(P):
    row = []
    for b in range(P):
        try:
            value = fn(a, b)
        except BaseException as e:
            print(json.dumps({"error": f"label({a}, {b}) raised {describe(e)}"}))
            sys.exit(0)
        if value not in (0, 1) or isinstance(value, float) and value != int(value):
            print(json.dumps({"error": f"label({a}, {b}) returned {value!r}; labels must be 0 or 1"}))
            sys.exit(0)
        row.append(int(value))
    table.append(row)
print(json.dumps({"table": table}))
"""


def _limits(cpu_seconds: int):
    def apply() -> None:  # in the child, before it runs anything of the submission's
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return apply


def run_program(path: Path, *, timeout: float | int = 30.0) -> Tensor:
    """The ``[113, 113]`` label table a submitted ``label(a, b)`` computes, from an isolated process."""
    with tempfile.TemporaryDirectory() as cwd:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", _RUNNER, str(path.resolve()), str(P)], cwd=cwd,
                                  capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=_limits(int(timeout) + 1), env={"PATH": os.environ.get("PATH", "")})
        except subprocess.TimeoutExpired:
            raise SubmissionError(f"{path}: label(a, b) did not finish all {P * P} inputs within {timeout:g} s"
                                  ) from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        why = f"exit status {proc.returncode}" + (" (killed: CPU or memory limit)" if proc.returncode < 0 else "")
        raise SubmissionError(f"{path}: the program produced no answer ({why}); stderr: {proc.stderr[-500:]}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise SubmissionError(f"{path}: {answer['error']}")
    return torch.tensor(answer["table"])


def _table_from_rows(rows: list, where: str) -> Tensor:
    try:
        table = torch.tensor(rows)
    except (TypeError, ValueError) as e:
        raise SubmissionError(f"{where}: the labels must be a {P} x {P} grid of 0/1 ({e})") from None
    if tuple(table.shape) != (P, P):
        raise SubmissionError(f"{where}: the label table must be {P} x {P} (row a, column b), got shape "
                              f"{tuple(table.shape)}")
    bad = ~((table == 0) | (table == 1))
    if bad.any():
        a, b = (int(i) for i in bad.nonzero()[0])
        raise SubmissionError(f"{where}: labels must be 0 or 1; row {a}, column {b} is {table[a, b].item()!r}")
    return table.long()


def read_table(path: Path) -> Tensor:
    """A label table from JSON (``{"labels": [[...]]}`` or a bare grid) or CSV (a grid, or rows a,b,label)."""
    if path.suffix == ".json":
        data = read_json(path)
        return _table_from_rows(data.get("labels") if isinstance(data, dict) else data, str(path))
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r]
    if rows and len(rows[0]) == 3 and len(rows) >= P * P:  # long form: a,b,label (with or without a header)
        body = rows[1:] if not rows[0][0].strip().isdigit() else rows
        table = torch.full((P, P), -1)
        for i, (a, b, y) in enumerate(body):
            try:
                table[int(a), int(b)] = int(y)
            except (ValueError, IndexError):
                raise SubmissionError(f"{path}: row {i + 1}: expected a,b,label with a, b in 0..{P - 1}, got "
                                      f"{[a, b, y]}") from None
        if (table < 0).any():
            a, b = (int(i) for i in (table < 0).nonzero()[0])
            raise SubmissionError(f"{path}: no label for a={a}, b={b}")
        return _table_from_rows(table.tolist(), str(path))
    try:
        grid = [[int(v) for v in r] for r in rows]
    except ValueError as e:
        raise SubmissionError(f"{path}: the CSV must hold a {P} x {P} grid of 0/1 or rows a,b,label ({e})") from None
    return _table_from_rows(grid, str(path))


def read_json(path: Path):
    return read_json_file(path, SubmissionError, f"{path}: no such submission file")


@dataclass(frozen=True)
class CircuitSubmission:
    edges: frozenset[str]
    scores: dict[str, float] | None
    signed: bool = False  # rank by the score itself (ACDC-style files) rather than by |score|


def read_circuit(path: Path) -> CircuitSubmission:
    """A mechwork circuit file, or ``{"edges": [...], "scores": {...}}``."""
    data = read_json(path)
    if isinstance(data, dict) and data.get("schema") == "mechwork.circuit":
        from ..discovery import Circuit, CircuitFileError

        try:
            circuit = Circuit.from_dict(data, where=str(path))
        except CircuitFileError as e:
            raise SubmissionError(str(e)) from None
        return CircuitSubmission(frozenset(circuit.selected), dict(circuit.edges),
                                 circuit.provenance.get("ranking") == "signed")
    if not isinstance(data, dict) or not isinstance(data.get("edges"), list):
        raise SubmissionError(f'{path}: expected a mechwork circuit file or {{"edges": ["SRC->DST", ...]}}')
    if not all(isinstance(e, str) for e in data["edges"]):
        raise SubmissionError(f"{path}: 'edges' must be a list of edge names (strings)")
    scores = data.get("scores")
    if scores is not None and not (isinstance(scores, dict)
                                   and all(isinstance(v, (int, float)) for v in scores.values())):
        raise SubmissionError(f"{path}: 'scores' must map edge names to numbers")
    return CircuitSubmission(frozenset(data["edges"]), {k: float(v) for k, v in scores.items()} if scores else None)


@dataclass(frozen=True)
class TriggerSubmission:
    trigger: tuple[str, ...]
    behaviour: str


def read_trigger(path: Path) -> TriggerSubmission:
    """``{"trigger": ["n7", ...], "behaviour": "..."}``, or a text file with the tokens on one line."""
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("trigger"), list) or not all(
                isinstance(t, str) for t in data["trigger"]):
            raise SubmissionError(f'{path}: expected {{"trigger": ["token", ...], "behaviour": "..."}}')
        return TriggerSubmission(tuple(data["trigger"]), str(data.get("behaviour", "")))
    tokens = tuple(path.read_text().split())
    if not tokens:
        raise SubmissionError(f"{path}: empty trigger")
    return TriggerSubmission(tokens, "")


def submission_kind(path: Path) -> str:
    """Which question a submission file answers, from its form."""
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    if path.suffix == ".py":
        return "program"
    if path.suffix == ".csv":
        return "program"
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, list) or isinstance(data, dict) and "labels" in data:
            return "program"
        if isinstance(data, dict) and ("edges" in data or data.get("schema") == "mechwork.circuit"):
            return "circuit"
        if isinstance(data, dict) and "trigger" in data:
            return "trigger"
        raise SubmissionError(f"{path}: cannot tell what this answers: expected 'labels', 'edges' or 'trigger'")
    if path.suffix == ".txt":
        return "trigger"
    raise SubmissionError(f"{path}: unknown submission format {path.suffix!r} (use .py, .json, .csv or .txt)")
