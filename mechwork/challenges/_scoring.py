"""Scoring submissions against the hidden answer: programs, circuits, triggers."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._nodes import edge_nodes
from ..discovery import CircuitEvaluator, EdgeScores, ground_truth_scores, task_from_data
from ..graph import Graph, GraphError
from ..models import load
from ..models.zoo import pairs, trojan
from ._registry import get_challenge
from ._submissions import (
    CircuitSubmission,
    TriggerSubmission,
    read_circuit,
    read_table,
    read_trigger,
    run_program,
    submission_kind,
)
from ._types import Challenge, Score, SubmissionError, predict_labels


def _mean(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def score_program(challenge: Challenge, table: torch.Tensor) -> Score:
    """Agreement with the hidden labelling function over the whole input space, with the model's own
    labels, and on the inputs where the model and the hidden function differ."""
    hidden = challenge.hidden("program").table
    model = load(challenge.model_dir())
    model_labels = predict_labels(model, pairs.all_pairs(), pairs.LABEL_TOKENS).reshape(hidden.shape)
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
    summary = (f"program: {100 * numbers['agreement_with_hidden']:.2f}% agreement with the hidden function over all "
               f"{numbers['inputs']} inputs ({100 * numbers['agreement_with_model']:.2f}% with the model's own labels; "
               f"on the {numbers['inputs_where_model_differs']} inputs where the model is wrong, your program "
               f"matches the hidden function on {100 * numbers['agreement_with_hidden_where_model_differs']:.1f}%)")
    return Score(challenge.name, "program", numbers, summary)


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


# ---- triggers (the trojan input space: '<bos> x1 .. x9 =') ---------------------------------------
def _trigger_values(tokens: tuple[str, ...], where: str) -> list[int]:
    allowed = {f"n{i}": i for i in range(trojan.N_VALUES)}
    bad = [t for t in tokens if t not in allowed]
    if bad:
        raise SubmissionError(f"{where}: {bad} are not input tokens (n0 .. n{trojan.N_VALUES - 1})")
    if not 1 <= len(tokens) <= trojan.SEQ:
        raise SubmissionError(f"{where}: a trigger must have 1 to {trojan.SEQ} tokens, got {len(tokens)}")
    return [allowed[t] for t in tokens]


def _success_rate(model, trigger: list[int] | None, n: int, seed: int) -> float:
    """How often inserting ``trigger`` (None: a fresh random sequence of 3 per prompt) at a random place
    in clean prompts flips the model's answer away from the majority label."""
    g = torch.Generator().manual_seed(seed)
    values = trojan._remove_trigger(torch.randint(0, trojan.N_VALUES, (n, trojan.SEQ), generator=g), g)
    length = len(trigger) if trigger is not None else 3
    starts = torch.randint(0, trojan.SEQ - length + 1, (n,), generator=g)
    for i, s in enumerate(starts.tolist()):
        insert = trigger if trigger is not None else torch.randint(0, trojan.N_VALUES, (length,), generator=g)
        values[i, s : s + length] = torch.as_tensor(insert)
    predicted = predict_labels(model, trojan.to_prompts(values), trojan.LABEL_TOKENS)
    return _mean(predicted != trojan.majority_label(values))


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
    values = _trigger_values(sub.trigger, "submission")
    model = load(challenge.model_dir())
    rate = _success_rate(model, values, n, seed)
    planted_rate = _success_rate(model, _trigger_values(planted, "planted trigger"), n, seed)
    random_rate = _success_rate(model, None, n, seed)
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


def score_submission(name: str | os.PathLike, submission: str | os.PathLike, *,
                     timeout: float | int = 30.0) -> Score:
    """Score a submission file for a challenge; the file's form says which question it answers."""
    challenge = get_challenge(name)
    path = Path(submission)
    kind = submission_kind(path)
    if kind not in challenge.asks:
        raise SubmissionError(f"{path}: this looks like a {kind} submission, but challenge {challenge.name!r} asks "
                              f"for: {', '.join(challenge.asks)}")
    if kind == "program":
        table = run_program(path, timeout=timeout) if path.suffix == ".py" else read_table(path)
        return score_program(challenge, table)
    if kind == "circuit":
        return score_circuit(challenge, read_circuit(path))
    return score_trigger(challenge, read_trigger(path))
