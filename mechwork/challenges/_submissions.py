"""Reading submissions. Every problem becomes a :class:`SubmissionError` that says what and where.

A submitted Python program is untrusted code: it runs in the sandbox of :mod:`._sandbox` (only the
standard library and its own file visible, no network, one process, CPU, memory, output and
wall-clock limits), and only its JSON answer comes back, checked like a submitted table. Every other
submission (JSON/CSV tables, circuit files, triggers) is parsed as data only, at most
``MAX_FILE_BYTES`` long.
"""

from __future__ import annotations

import csv
import json
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .._io import read_json as read_json_file
from ._sandbox import OUTPUT_LIMIT, run_python
from ._types import SubmissionError

P = 113
MAX_FILE_BYTES = 32 * 1024**2

# The start of every runner, in the child: import the file; reply() writes one JSON line to the original
# stdout (the submission's own prints go to stderr) and exits.
RUNNER_PREAMBLE = r"""
import json, os, runpy, sys
answer = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def reply(**what):
    answer.write(json.dumps(what) + "\n")
    answer.flush()
    sys.exit(0)
def describe(e):
    if isinstance(e, SyntaxError):
        return f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    try:
        return f"{type(e).__name__}: {e}"[:1000]
    except BaseException:
        return type(e).__name__
try:
    namespace = runpy.run_path(sys.argv[1], run_name="submission")
except BaseException as e:
    reply(error="importing the file raised " + describe(e))
"""

# Calls label(a, b) on every input.
_RUNNER = RUNNER_PREAMBLE + r"""
P = int(sys.argv[2])
fn = namespace.get("label")
if not callable(fn):
    reply(error="the file defines no function label(a, b)")
table = []
for a in range(P):
    row = []
    for b in range(P):
        try:
            value = fn(a, b)
            ok = type(value) in (int, bool, float) and value in (0, 1)
        except BaseException as e:
            reply(error=f"label({a}, {b}) raised {describe(e)}")
        if not ok:
            shown = repr(value)[:80] if type(value) in (int, bool, float, str) else f"a {type(value).__name__!r}"
            reply(error=f"label({a}, {b}) returned {shown}; labels must be 0 or 1")
        row.append(int(value))
    table.append(row)
reply(table=table)
"""


@dataclass(frozen=True)
class ProgramRun:
    """The label table a program computed and how it ran: ``isolation`` is ``"bubblewrap"`` or
    ``"unisolated"`` (no isolation available, run anyway because the caller trusted it)."""

    table: Tensor
    isolation: str


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    why = {"SIGXCPU": "CPU-time limit", "SIGKILL": "killed: CPU or memory limit", "SIGSYS": "forbidden system call"}
    return f"{name}" + (f" ({why[name]})" if name in why else "")


def run_for_answer(path: Path, runner: str, args: list[str], key: str, *, timeout: float | int, trust: bool,
                   unfinished: str, answer_is: str) -> tuple[object, str]:
    """Run ``runner`` (which starts with :data:`RUNNER_PREAMBLE`) on a submitted file in the sandbox and return
    its answer's ``key`` and how it was isolated; every failure is a :class:`SubmissionError` naming the file.
    ``unfinished`` says what did not finish, for the time-out message; ``answer_is`` what an answer is."""
    _check_size(path)
    run = run_python(path, runner, args, timeout=timeout, trust=trust)
    if run.timed_out:
        raise SubmissionError(f"{path}: {unfinished} within {timeout:g} s")
    if run.output_exceeded:
        raise SubmissionError(f"{path}: the program printed more than {OUTPUT_LIMIT // 1024**2} MiB; it was stopped")
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if not lines:
        why = f"exit status {run.exit_code}" if run.signal is None else _signal_name(run.signal)
        raise SubmissionError(f"{path}: the program produced no answer ({why}); stderr: {run.stderr[-500:]}")
    try:
        answer = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise SubmissionError(f"{path}: the program's answer is not valid JSON") from None
    if not isinstance(answer, dict) or not ("error" in answer or key in answer):
        raise SubmissionError(f"{path}: the program's answer is not {answer_is}")
    if "error" in answer:
        raise SubmissionError(f"{path}: {answer['error']}")
    return answer[key], run.isolation


def execute_program(path: Path, *, timeout: float | int = 30.0, trust: bool = False) -> ProgramRun:
    """Run a submitted ``label(a, b)`` in the sandbox; ``trust=True`` runs it unisolated where no
    sandbox is available (refused otherwise, with :class:`~._sandbox.SandboxUnavailable`)."""
    rows, isolation = run_for_answer(path, _RUNNER, [str(P)], "table", timeout=timeout, trust=trust,
                                     unfinished=f"label(a, b) did not finish all {P * P} inputs",
                                     answer_is="a label table")
    return ProgramRun(_table_from_rows(rows, f"{path}: the program's answer"), isolation)


def run_program(path: Path, *, timeout: float | int = 30.0, trust: bool = False) -> Tensor:
    """The ``[113, 113]`` label table a submitted ``label(a, b)`` computes, from the sandbox
    (:func:`execute_program`, which also says how it was isolated)."""
    return execute_program(path, timeout=timeout, trust=trust).table


def _check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such submission file") from None
    if size > MAX_FILE_BYTES:
        raise SubmissionError(f"{path}: {size / 1024**2:.1f} MiB is larger than submissions may be "
                              f"({MAX_FILE_BYTES // 1024**2} MiB)")


def _table_from_rows(rows: object, where: str) -> Tensor:
    if not isinstance(rows, list):
        raise SubmissionError(f"{where}: the labels must be a {P} x {P} grid of 0/1, got {type(rows).__name__}")
    try:
        table = torch.tensor(rows)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
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
    _check_size(path)
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
    """A submission's JSON, parsed as data only (size-limited; nesting too deep is an error, not a crash)."""
    _check_size(path)
    try:
        return read_json_file(path, SubmissionError, f"{path}: no such submission file")
    except RecursionError:
        raise SubmissionError(f"{path}: the JSON is nested too deeply") from None


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
    _check_size(path)
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
