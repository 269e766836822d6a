"""How good is a circuit: faithfulness (MIB's CPR and CMD) and agreement with planted ground truth.

Faithfulness of a circuit C, normalised: f(C) = (m(C) - m(empty)) / (m(full) - m(empty)), where m is
the task metric with every edge outside C ablated. The faithfulness curve takes the top k% of edges
for k in PERCENTAGES; CPR is the area under f (higher is better) and CMD the area under |1 - f|
(lower is better), both by the trapezoid rule over the fraction of edges kept, as MIB defines them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .._nodes import edge_nodes
from ..graph import Graph, masked_forward
from ..hooks._runner import embed
from ..metrics import as_scalar, metric_name, metric_value
from ._batches import PerBatch, micro_batches
from ._select import top_n
from ._types import DiscoveryTask, EdgeScores

PERCENTAGES = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class _EvalBatch:
    resid: torch.Tensor  # [batch, pos, d_model]
    ablated: torch.Tensor  # [batch or 1, pos, sources, d_model]
    task: DiscoveryTask


def _eval_batch(model, graph: Graph, task: DiscoveryTask) -> _EvalBatch:
    with torch.no_grad():
        return _EvalBatch(embed(model, task.clean), task.ablated(model, graph), task)


class CircuitEvaluator:
    """Evaluate many circuits on one task. With one batch its embeddings and ablation values are computed
    once; with several (``task.batch_size``) they are recomputed per batch on every evaluation, so memory
    is one batch's. The metric of a circuit is the mean over every prompt (micro-batches weighted by
    their sizes); faithfulness is the ratio of those means, never a mean of per-batch ratios."""

    def __init__(self, model, graph: Graph, task: DiscoveryTask):
        self.model, self.graph, self.task = model, graph, task
        self._batches = PerBatch(micro_batches(model, graph, task), lambda t: _eval_batch(model, graph, t))
        self.full = self.value(graph.full_mask(1.0))
        self.empty = self.value(graph.full_mask(0.0))

    @torch.no_grad()
    def value(self, mask: torch.Tensor) -> float:
        """The metric, over every prompt, with each edge weighted by ``mask``."""
        return self._batches.total(lambda b: self._batch_value(b, mask))

    def _batch_value(self, batch: _EvalBatch, mask: torch.Tensor) -> float:
        logits = masked_forward(self.model, self.graph, batch.resid, mask, batch.ablated, position=self.task.position)
        return as_scalar(metric_value(batch.task.metric, logits), metric_name(batch.task.metric))

    def faithfulness(self, edges: Iterable[str]) -> float:
        span = self.full - self.empty
        if abs(span) < 1e-12:
            return float("nan")  # the ablation does not change the metric: faithfulness is undefined
        return (self.value(self.graph.mask_of(edges)) - self.empty) / span


@dataclass(frozen=True)
class FaithfulnessCurve:
    fractions: tuple[float, ...]
    faithfulness: tuple[float, ...]
    n_edges: tuple[int, ...]
    full_value: float
    empty_value: float

    @property
    def cpr(self) -> float:
        return _trapezoid(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> float:
        return _trapezoid(self.fractions, [abs(1 - f) for f in self.faithfulness])

    def to_dict(self) -> dict:
        return {"fractions": list(self.fractions), "faithfulness": list(self.faithfulness),
                "n_edges": list(self.n_edges), "full_value": self.full_value, "empty_value": self.empty_value,
                "cpr": self.cpr, "cmd": self.cmd}


def _trapezoid(x, y) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def faithfulness_curve(evaluator: CircuitEvaluator, scores: EdgeScores,
                       percentages=PERCENTAGES) -> FaithfulnessCurve:
    total = scores.graph.n_edges
    sizes = [max(1, round(total * p / 100)) for p in percentages]
    values = tuple(evaluator.faithfulness(top_n(scores, k)) for k in sizes)
    return FaithfulnessCurve(tuple(p / 100 for p in percentages), values, tuple(sizes), evaluator.full,
                             evaluator.empty)


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive outranks a random negative
    (ties count one half). NaN when either class is empty."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    values = torch.tensor(pos + neg, dtype=torch.float64)
    ranks = _average_ranks(values)
    rank_sum = float(ranks[: len(pos)].sum())
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def roc_curve(scores: list[float], labels: list[bool]) -> tuple[list[float], list[float]]:
    """False- and true-positive rates as the threshold falls through the scores (tied scores enter
    together, so the trapezoid area under the points equals :func:`roc_auc`)."""
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return [0.0, 1.0], [0.0, 1.0]
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    for i, (score, label) in enumerate(pairs):
        tp, fp = tp + label, fp + (not label)
        if i + 1 == len(pairs) or pairs[i + 1][0] != score:
            fpr.append(fp / n_neg)
            tpr.append(tp / n_pos)
    return fpr, tpr


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _base_edge_importance(scores: EdgeScores) -> dict[str, float]:
    """Importance per edge name with positions merged (the max over positions)."""
    out: dict[str, float] = {}
    for name, value in zip(scores.graph.edges, scores.importance().tolist(), strict=True):
        base = name.split("@")[0]
        out[base] = max(out.get(base, float("-inf")), value)
    return out


def ground_truth_scores(scores: EdgeScores, truth) -> dict[str, float]:
    """Edge and node ROC AUC against a planted circuit, and precision/recall of the top |truth| edges.

    Structural edges (planted but invisible to corrupted-input ablation) are left out of the edge
    scores; a node's importance is the largest importance of the edges into or out of it.
    """
    importance = _base_edge_importance(scores)
    edges = [e for e in importance if e not in truth.structural_edges]
    labels = [e in truth.edges for e in edges]
    edge_auc = roc_auc([importance[e] for e in edges], labels)
    fpr, tpr = roc_curve([importance[e] for e in edges], labels)
    ranked = sorted(edges, key=lambda e: -importance[e])[: len(truth.edges)]
    hits = sum(e in truth.edges for e in ranked)
    node_importance: dict[str, float] = {}
    for e, value in importance.items():
        for node in edge_nodes(e):
            node_importance[node] = max(node_importance.get(node, float("-inf")), value)
    inner = [n for n in node_importance if n not in ("input", "logits")]
    node_auc = roc_auc([node_importance[n] for n in inner], [n in truth.nodes for n in inner])
    return {"edge_roc_auc": edge_auc, "node_roc_auc": node_auc,
            "precision_at_size": hits / max(1, len(ranked)), "recall_at_size": hits / max(1, len(truth.edges)),
            "edge_roc": {"fpr": fpr, "tpr": tpr}}
