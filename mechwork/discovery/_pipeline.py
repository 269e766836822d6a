"""Scores -> circuit -> faithfulness -> ground truth -> a saved, re-verifiable :class:`Circuit`."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib.metadata import version

import torch

from ..graph import Graph
from ..models import weights_hash
from ._circuit import Circuit, now
from ._registry import discover
from ._scoring import CircuitEvaluator, faithfulness_curve, ground_truth_scores
from ._select import select, top_n
from ._types import DiscoveryTask, EdgeScores, make_metric


def smallest_faithful(evaluator: CircuitEvaluator, scores: EdgeScores, target: float) -> frozenset[str]:
    """The smallest top-n circuit with faithfulness >= ``target``, by bisection over n (faithfulness
    is not monotone in n in general; bisection finds a size where the target is first crossed)."""
    low, high = 0, scores.graph.n_edges
    while high - low > 1:
        mid = (low + high) // 2
        if evaluator.faithfulness(top_n(scores, mid)) >= target:
            high = mid
        else:
            low = mid
    return top_n(scores, high)


@dataclass(frozen=True)
class CircuitRequest:
    """How to turn scores into a circuit: ``how`` is ``"auto"`` (the method's own circuit if it makes
    one, else the smallest top-n reaching ``target`` faithfulness), ``"top-n"``, ``"threshold"`` or
    ``"greedy"`` with ``value``."""

    how: str = "auto"
    value: float | None = None
    target: float = 0.9


def choose_edges(evaluator: CircuitEvaluator, scores: EdgeScores, request: CircuitRequest) -> frozenset[str]:
    if request.how == "auto":
        return scores.circuit if scores.circuit is not None else smallest_faithful(evaluator, scores, request.target)
    if request.value is None:
        raise ValueError(f"circuit selection {request.how!r} needs a value")
    return select(scores, request.how, request.value)


def find_circuit(model, data, method: str, *, metric: str = "logit_diff", ablation: str = "corrupted",
                 positions: bool = False, request: CircuitRequest = CircuitRequest(), truth=None,
                 task_name: str | None = None, seed: int | None = None, batch_size: int | None = None,
                 **options) -> Circuit:
    """Run ``method`` on ``model`` for task data (zoo :class:`TaskData`-like), choose a circuit, score it.
    ``seed``: the seed the task data was drawn with, recorded in the provenance. ``batch_size``: prompts
    run at once by the method and every evaluation (``None``: all); recorded in the provenance."""
    graph = Graph.from_model(model, positions=data.clean.shape[1] if positions else None)
    task = DiscoveryTask(data.clean, data.corrupted, make_metric(metric, model, data, batch_size=batch_size), metric,
                         ablation, batch_size)
    scores = discover(model, graph, task, method, **options)
    evaluator = CircuitEvaluator(model, graph, task)
    edges = choose_edges(evaluator, scores, request)
    curve = faithfulness_curve(evaluator, scores)
    return Circuit(
        model={"spec": str(getattr(model, "mechwork_spec", "unknown")), "weights_sha256": weights_hash(model),
               "n_layers": graph.n_layers, "n_heads": graph.n_heads,
               **({"n_kv_heads": graph.kv_heads} if graph.grouped else {})},
        task={"name": task_name, "metric": metric, "ablation": ablation, "position": int(data.position),
              "positions": graph.positions, "prompts": _prompts(data)},
        method=method,
        options=scores.options,
        edges=scores.by_edge(),
        selected=tuple(sorted(edges)),
        selection={"how": request.how, "value": request.value, "target": request.target},
        faithfulness={"value": evaluator.faithfulness(edges), "full_value": evaluator.full,
                      "empty_value": evaluator.empty, "curve": curve.to_dict()},
        ground_truth=None if truth is None else {**ground_truth_scores(scores, truth), "edges": sorted(truth.edges),
                                                 "nodes": sorted(truth.nodes),
                                                 "structural_edges": sorted(truth.structural_edges)},
        provenance={"mechwork": version("mechwork"), "torch": torch.__version__, "python": platform.python_version(),
                    "seconds": scores.seconds, "created": now(), "ranking": scores.ranking, "seed": seed,
                    **({"batch_size": batch_size} if batch_size is not None else {})},
    )


def _prompts(data) -> dict:
    return {k: getattr(data, k).tolist() for k in ("clean", "corrupted", "answers", "wrong")}
