"""The built-in challenge kinds — ``program``, ``circuit``, ``trigger`` — and scoring a submission file.

Each kind reads its input space from the challenge (``challenge.space(kind)``, parsed from the pack's
JSON by the kind), never from one zoo model's constants: see ``_kinds`` for the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .._nodes import edge_nodes
from ..discovery import CircuitEvaluator, EdgeScores, ground_truth_scores, task_from_data
from ..graph import Graph, GraphError
from ..models import load
from ..models.zoo import CircuitGroundTruth, LabellingGroundTruth, TriggerGroundTruth
from ._kinds import TokenIds, TokenSpace, get_kind, refuse_unknown, register_kind, require
from ._registry import get_challenge
from ._submissions import (
    CircuitSubmission,
    ProgramRun,
    TriggerSubmission,
    execute_program,
    read_circuit,
    read_table,
    read_trigger,
    submission_kind,
)
from ._types import Challenge, ChallengeError, ChallengeKind, Score, SubmissionError, predict_labels

P = 113  # execute_program and read_table give 113 x 113 tables: label(a, b) for a, b in 0..112


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def _form(path: Path) -> str | None:
    """Which built-in form a submission file has (None: none, or unreadable)."""
    try:
        return submission_kind(path)
    except SubmissionError:
        return None


def _strings(data: dict, key: str, where: str) -> list[str]:
    items = require(data, key, list, where)
    if not all(isinstance(x, str) for x in items):
        raise ChallengeError(f"{where}.{key}: must be a list of strings")
    return items


# ---- programs: label(a, b) over 'prefix a b suffix' --------------------------------------------------
def _program_space(data: dict, where: str) -> TokenSpace:
    space = TokenSpace.parse(data, where, length=2)
    if len(space.values) != P:
        raise ChallengeError(f"{where}.values: a program challenge is scored on label(a, b) for a, b in 0..{P - 1} "
                             f"(113 x 113 tables): it needs {P} value tokens, got {len(space.values)}")
    if len(space.labels) != 2:
        raise ChallengeError(f"{where}.labels: labels are 0 and 1, so two label tokens; got {len(space.labels)}")
    return space


def _program_answer(data: dict, where: str) -> LabellingGroundTruth:
    try:
        table = torch.tensor(require(data, "table", list, where))
    except (TypeError, ValueError) as e:
        raise ChallengeError(f"{where}.table: not a grid of 0/1 ({e})") from None
    if tuple(table.shape) != (P, P) or not ((table == 0) | (table == 1)).all():
        raise ChallengeError(f"{where}.table: must be a {P} x {P} grid of 0/1, got shape {tuple(table.shape)}")
    return LabellingGroundTruth(table=table.long(), description=str(data.get("description", "")))


def _read_program(path: Path, space, *, timeout: float | int = 30.0,
                  trust: bool = False) -> torch.Tensor | ProgramRun:
    return execute_program(path, timeout=timeout, trust=trust) if path.suffix == ".py" else read_table(path)


def score_program(challenge: Challenge, table: torch.Tensor | ProgramRun) -> Score:
    """Agreement with the hidden labelling function over the whole input space, with the model's own
    labels, and on the inputs where the model and the hidden function differ (and, for a program that
    ran, the isolation it ran under)."""
    ran = table if isinstance(table, ProgramRun) else None
    table = table.table if ran is not None else table
    hidden = challenge.hidden("program").table
    if tuple(table.shape) != tuple(hidden.shape):
        raise SubmissionError(f"the label table must be {hidden.shape[0]} x {hidden.shape[1]}, got "
                              f"{tuple(table.shape)}")
    model = load(challenge.model_dir())
    ids = challenge.space("program").resolve(model, f"challenge {challenge.name!r}: program space")
    model_labels = predict_labels(model, ids.prompts(ids.every_input()), ids.labels).reshape(hidden.shape)
    differ = model_labels != hidden
    numbers = {
        "inputs": hidden.numel(),
        "agreement_with_hidden": _mean(table == hidden),
        "agreement_with_model": _mean(table == model_labels),
        "model_accuracy": _mean(model_labels == hidden),
        "inputs_where_model_differs": int(differ.sum()),
        "agreement_with_hidden_where_model_differs": _mean(table[differ] == hidden[differ]),
        "exact": bool(torch.equal(table, hidden)),
    }
    if ran is not None:
        numbers["isolation"] = ran.isolation
    summary = (f"program: {100 * numbers['agreement_with_hidden']:.2f}% agreement with the hidden function over all "
               f"{numbers['inputs']} inputs ({100 * numbers['agreement_with_model']:.2f}% with the model's own labels; "
               f"on the {numbers['inputs_where_model_differs']} inputs where the model is wrong, your program "
               f"matches the hidden function on {100 * numbers['agreement_with_hidden_where_model_differs']:.1f}%)")
    return Score(challenge.name, "program", numbers, summary)


# ---- circuits ----------------------------------------------------------------------------------------
def _circuit_space(data: dict, where: str) -> None:
    refuse_unknown(data, set(), where)  # the prompts are the challenge's public task


def _circuit_answer(data: dict, where: str) -> CircuitGroundTruth:
    structural = _strings(data, "structural_edges", where) if "structural_edges" in data else []
    return CircuitGroundTruth(nodes=frozenset(_strings(data, "nodes", where)),
                              edges=frozenset(_strings(data, "edges", where)), structural_edges=frozenset(structural))


def _checked_edges(graph: Graph, names, where: str) -> list[str]:
    for name in names:
        try:
            graph.index(name)
        except GraphError as e:
            raise SubmissionError(f"{where}: {e}") from None
    return list(names)


def score_circuit(challenge: Challenge, sub: CircuitSubmission, *, n_prompts: int = 32, seed: int = 0) -> Score:
    """ROC AUC (from the submitted scores, else membership), precision/recall of edges and nodes against
    the planted circuit, and the submitted circuit's faithfulness on the challenge's task."""
    truth = challenge.hidden("circuit")
    if challenge.public_task is None:
        raise ChallengeError(f"challenge {challenge.name!r}: a circuit question needs the challenge's public task "
                             "(its prompts), and it has none")
    model = load(challenge.model_dir())
    graph = Graph.from_model(model)
    edges = _checked_edges(graph, sub.edges, "submission")
    if sub.scores:
        _checked_edges(graph, sub.scores, "submission 'scores'")
        key = (lambda v: v) if sub.signed else abs
        floor = min(key(v) for v in sub.scores.values()) - 1.0
        values = [key(sub.scores[e]) if e in sub.scores else floor for e in graph.edges]
    else:
        values = [1.0 if e in sub.edges else 0.0 for e in graph.edges]
    ranking = EdgeScores(graph, torch.tensor(values), "submission", ranking="signed")
    gt = ground_truth_scores(ranking, truth)
    scored = {e for e in edges if e not in truth.structural_edges}
    hits = len(scored & truth.edges)
    sub_nodes = {n for e in edges for n in edge_nodes(e.split("@")[0])} - {"input", "logits"}
    true_nodes = set(truth.nodes) - {"input", "logits"}
    node_hits = len(sub_nodes & true_nodes)
    data = challenge.public_task(n_prompts, seed)
    evaluator = CircuitEvaluator(model, graph, task_from_data(model, data))
    numbers = {
        "edge_roc_auc": gt["edge_roc_auc"], "node_roc_auc": gt["node_roc_auc"],
        "edge_precision": hits / max(1, len(scored)), "edge_recall": hits / max(1, len(truth.edges)),
        "node_precision": node_hits / max(1, len(sub_nodes)), "node_recall": node_hits / max(1, len(true_nodes)),
        "submitted_edges": len(edges), "planted_edges": len(truth.edges),
        "faithfulness": evaluator.faithfulness(edges),
        "ranked_by": ("score" if sub.signed else "|score|") if sub.scores else "membership",
    }
    summary = (f"circuit: edge precision {numbers['edge_precision']:.2f}, recall {numbers['edge_recall']:.2f}, "
               f"edge ROC AUC {numbers['edge_roc_auc']:.3f} (ranked by {numbers['ranked_by']}), node precision "
               f"{numbers['node_precision']:.2f}, recall {numbers['node_recall']:.2f}; faithfulness of your "
               f"{len(edges)}-edge circuit {numbers['faithfulness']:.3f}")
    return Score(challenge.name, "circuit", numbers, summary)


# ---- triggers: a token sequence inserted into 'prefix x1 .. xL suffix' flips a clean rule ------------
@dataclass(frozen=True)
class TriggerSpace:
    """The prompts and the clean rule the backdoor breaks. ``majority``: the clean label is 1 when more
    than half of x1 .. xL are values at index ``high_from`` or above, else 0."""

    tokens: TokenSpace
    high_from: int

    def clean_label(self, choices: torch.Tensor) -> torch.Tensor:
        return ((choices >= self.high_from).sum(-1) > self.tokens.length // 2).long()

    def indices(self, trigger: tuple[str, ...], where: str) -> list[int]:
        allowed = {str(v): i for i, v in enumerate(self.tokens.values)}
        bad = [t for t in trigger if t not in allowed]
        if bad:
            raise SubmissionError(f"{where}: {bad} are not input tokens ({self.tokens.values[0]} .. "
                                  f"{self.tokens.values[-1]})")
        if not 1 <= len(trigger) <= self.tokens.length:
            raise SubmissionError(f"{where}: a trigger must have 1 to {self.tokens.length} tokens, got {len(trigger)}")
        return [allowed[t] for t in trigger]


CLEAN_RULES = ("majority",)


def _trigger_space(data: dict, where: str) -> TriggerSpace:
    tokens = TokenSpace.parse(data, where, extra=frozenset({"clean_rule"}))
    rule = require(data, "clean_rule", dict, where)
    name = require(rule, "rule", str, f"{where}.clean_rule")
    if name not in CLEAN_RULES:
        raise ChallengeError(f"{where}.clean_rule.rule: unknown rule {name!r}; known: {', '.join(CLEAN_RULES)}")
    refuse_unknown(rule, {"rule", "high_from"}, f"{where}.clean_rule")
    high_from = require(rule, "high_from", int, f"{where}.clean_rule")
    if not 0 < high_from < len(tokens.values) or len(tokens.labels) != 2:
        raise ChallengeError(f"{where}: the majority rule needs 0 < high_from < {len(tokens.values)} (got "
                             f"{high_from}) and two labels (got {len(tokens.labels)})")
    return TriggerSpace(tokens, high_from)


def _trigger_answer(data: dict, where: str) -> TriggerGroundTruth:
    return TriggerGroundTruth(trigger=tuple(_strings(data, "trigger", where)), behaviour=str(data.get("behaviour", "")))


def _contains(choices: torch.Tensor, seq: list[int]) -> torch.Tensor:
    return (choices.unfold(-1, len(seq), 1) == torch.tensor(seq)).all(-1).any(-1)


def _success_rate(model, ids: TokenIds, space: TriggerSpace, planted: list[int], trigger: list[int] | None,
                  n: int, seed: int) -> float:
    """How often inserting ``trigger`` (None: a fresh random sequence as long as the planted one, per
    prompt) at a random place in clean prompts (redrawn until free of the planted trigger) makes the
    model's answer differ from the clean rule's."""
    g = torch.Generator().manual_seed(seed)
    length, n_values = space.tokens.length, len(space.tokens.values)
    choices = torch.randint(0, n_values, (n, length), generator=g)
    while (hit := _contains(choices, planted)).any():
        choices[hit] = torch.randint(0, n_values, (int(hit.sum()), length), generator=g)
    size = len(trigger) if trigger is not None else len(planted)
    starts = torch.randint(0, length - size + 1, (n,), generator=g)
    for i, s in enumerate(starts.tolist()):
        insert = trigger if trigger is not None else torch.randint(0, n_values, (size,), generator=g)
        choices[i, s : s + size] = torch.as_tensor(insert)
    return _mean(predict_labels(model, ids.prompts(choices), ids.labels) != space.clean_label(choices))


def _longest_common_run(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            k = 0
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
            best = max(best, k)
    return best


def score_trigger(challenge: Challenge, sub: TriggerSubmission, *, n: int = 2000, seed: int = 0) -> Score:
    planted = challenge.hidden("trigger").trigger
    space: TriggerSpace = challenge.space("trigger")
    values = space.indices(sub.trigger, "submission")
    planted_values = space.indices(planted, f"challenge {challenge.name!r}: planted trigger")
    model = load(challenge.model_dir())
    ids = space.tokens.resolve(model, f"challenge {challenge.name!r}: trigger space")
    rate = _success_rate(model, ids, space, planted_values, values, n, seed)
    planted_rate = _success_rate(model, ids, space, planted_values, planted_values, n, seed)
    random_rate = _success_rate(model, ids, space, planted_values, None, n, seed)
    common = set(sub.trigger) & set(planted)
    numbers = {
        "flip_rate": rate, "planted_flip_rate": planted_rate, "random_flip_rate": random_rate,
        "reproduces": rate >= 0.5 and rate >= 0.8 * planted_rate,
        "exact": tuple(sub.trigger) == tuple(planted),
        "token_overlap": len(common) / len(set(planted) | set(sub.trigger)),
        "longest_common_run": _longest_common_run(tuple(sub.trigger), tuple(planted)) / len(planted),
    }
    verdict = "reproduces" if numbers["reproduces"] else "does not reproduce"
    summary = (f"trigger: inserting yours flips the answer on {100 * rate:.1f}% of clean prompts (planted trigger "
               f"{100 * planted_rate:.1f}%, random triggers {100 * random_rate:.1f}%): it {verdict} the backdoor; "
               f"token overlap with the planted trigger {numbers['token_overlap']:.2f}, longest common run "
               f"{numbers['longest_common_run']:.2f}" + (" (exact match)" if numbers["exact"] else ""))
    return Score(challenge.name, "trigger", numbers, summary)


# ---- the registry's built-in kinds, and scoring a file ---------------------------------------------
register_kind(ChallengeKind(
    name="program", summary="recover the labelling program label(a, b) of a model on 'prefix a b suffix'",
    submit="a Python file defining `label(a, b)` returning 0 or 1, or the 113 x 113 table as JSON "
           '`{"labels": [[...]]}` or CSV',
    parse_space=_program_space, parse_answer=_program_answer, claims=lambda p: _form(p) == "program",
    read=_read_program, score=score_program))
register_kind(ChallengeKind(
    name="circuit", summary="find the edges that carry the challenge's public task",
    submit='JSON `{"edges": ["SRC->DST", ...], "scores": {...}}` or a mechwork circuit file',
    parse_space=_circuit_space, parse_answer=_circuit_answer, claims=lambda p: _form(p) == "circuit",
    read=lambda path, space, *, timeout=30.0: read_circuit(path), score=score_circuit))
register_kind(ChallengeKind(
    name="trigger", summary="find the token sequence that, inserted into a prompt, flips the clean rule",
    submit='JSON `{"trigger": ["token", ...], "behaviour": "..."}`',
    parse_space=_trigger_space, parse_answer=_trigger_answer, claims=lambda p: _form(p) == "trigger",
    read=lambda path, space, *, timeout=30.0: read_trigger(path), score=score_trigger))


def _kind_for(challenge: Challenge, path: Path) -> ChallengeKind:
    """The asked kind whose submission form ``path`` has."""
    asked = [get_kind(name) for name in challenge.asks]
    claiming = [k for k in asked if k.claims(path)]
    if len(claiming) == 1:
        return claiming[0]
    if claiming:
        names = ", ".join(k.name for k in claiming)
        raise SubmissionError(f"{path}: this file has the form of several questions ({names}) of challenge "
                              f"{challenge.name!r}; cannot tell which it answers")
    wanted = f"challenge {challenge.name!r} asks for: " + "; ".join(f"{k.name} ({k.submit})" for k in asked)
    try:
        guess = submission_kind(path)
    except SubmissionError as e:
        raise SubmissionError(f"{e}; {wanted}") from None
    raise SubmissionError(f"{path}: this looks like a {guess} submission, but {wanted}")


def score_submission(name: str | os.PathLike, submission: str | os.PathLike, *,
                     timeout: float | int = 30.0, trust: bool = False) -> Score:
    """Score a submission file for a challenge; the file's form says which of its questions it answers.
    ``trust``: where no sandbox works here, run a submitted program anyway, unisolated (it is refused
    otherwise); the score records the isolation it ran under."""
    challenge = get_challenge(name)
    path = Path(submission)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    kind = _kind_for(challenge, path)
    # trust is passed only when given, so that kinds whose files never run code need not accept it
    options = {"trust": True} if trust else {}
    return kind.score(challenge, kind.read(path, challenge.space(kind.name), timeout=timeout, **options))
