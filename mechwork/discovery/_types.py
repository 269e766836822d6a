"""What every discovery method takes (a :class:`DiscoveryTask`) and returns (:class:`EdgeScores`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..graph import Graph, ablation_values
from ..hooks._validation import InputError, check_pair
from ..metrics import Accuracy, CrossEntropy, KLDivergence, LogitDiff, PositionMetric, ProbDiff

ABLATIONS = ("corrupted", "mean", "zero")
METRICS = ("logit_diff", "prob_diff", "kl", "cross_entropy", "accuracy")
# Does a larger value of the metric mean the model does the task better?
HIGHER_IS_BETTER = {"logit_diff": True, "prob_diff": True, "accuracy": True, "kl": False, "cross_entropy": False}


@dataclass(frozen=True, eq=False)
class DiscoveryTask:
    """Prompts, the metric read at the answer position, and what an ablated edge carries.

    ``corrupted`` doubles as the reference set for ``ablation="mean"``.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "_batch pos"]
    metric: PositionMetric
    metric_key: str = "logit_diff"
    ablation: str = "corrupted"

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise InputError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")

    @property
    def position(self) -> int:
        return self.metric.position

    def ablated(self, model, graph: Graph) -> Tensor:
        return ablation_values(model, graph, self.ablation, self.clean, self.corrupted)


def make_metric(key: str, model, data) -> PositionMetric:
    """Build a named metric for zoo-style task data (``clean``, ``answers``, ``wrong``, ``position``)."""
    position = data.position
    if key == "logit_diff":
        return LogitDiff(position=position, answers=data.answers, wrong=data.wrong)
    if key == "prob_diff":
        return ProbDiff(position=position, answers=data.answers, wrong=data.wrong)
    if key == "cross_entropy":
        return CrossEntropy(position=position, answers=data.answers)
    if key == "accuracy":
        return Accuracy(position=position, answers=data.answers, wrong=data.wrong)
    if key == "kl":
        with torch.no_grad():
            reference = model(data.clean)[:, position]
        return KLDivergence(position=position, reference=reference)
    raise InputError(f"unknown metric {key!r}; choose one of {', '.join(METRICS)}")


def task_from_data(model, data, *, metric: str = "logit_diff", ablation: str = "corrupted") -> DiscoveryTask:
    """A :class:`DiscoveryTask` from a zoo :class:`~mechwork.models.zoo.TaskData`."""
    check_pair(model, data.clean, data.corrupted)
    return DiscoveryTask(data.clean, data.corrupted, make_metric(metric, model, data), metric, ablation)


@dataclass(frozen=True, eq=False)
class EdgeScores:
    """One score per graph edge: the (estimated) change of the metric when that edge alone is ablated.

    ``ranking`` says how to order edges by importance: ``"abs"`` (by magnitude; attribution methods)
    or ``"signed"`` (larger is more important; ACDC and the learned mask score that way).
    ``circuit`` is the edge set a method chose itself (ACDC), if any.
    """

    graph: Graph
    scores: Float[Tensor, " edges"]
    method: str
    options: dict = field(default_factory=dict)
    ranking: str = "abs"
    node_scores: dict[str, float] | None = None
    circuit: frozenset[str] | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.scores.shape != (self.graph.n_edges,):
            raise ValueError(f"{self.method}: {tuple(self.scores.shape)} scores for {self.graph.n_edges} edges")

    def importance(self) -> Float[Tensor, " edges"]:
        """The ordering key: larger means more important."""
        return self.scores.abs() if self.ranking == "abs" else self.scores

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        order = torch.argsort(self.importance(), descending=True, stable=True)[:n]
        return [(self.graph.edges[i], float(self.scores[i])) for i in order]

    def by_edge(self) -> dict[str, float]:
        return dict(zip(self.graph.edges, self.scores.tolist(), strict=True))

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(e)}</td><td>{v:.4g}</td></tr>" for e, v in self.top(10))
        caption = (f"{escape(self.method)} scores over {self.graph.n_edges} edges (ranked by "
                   f"{'|score|' if self.ranking == 'abs' else 'score'}; {self.seconds:.2f} s); top 10")
        return f"<table><caption>{caption}</caption><tr><th>edge</th><th>score</th></tr>{rows}</table>"
