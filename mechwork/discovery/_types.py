"""What every discovery method takes (a :class:`DiscoveryTask`) and returns (:class:`EdgeScores`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._batching import split_rows
from ..graph import Graph, ablation_values
from ..hooks._validation import InputError, check_pair
from ..metrics import Accuracy, CrossEntropy, KLDivergence, LogitDiff, PositionMetric, ProbDiff, ThresholdProbDiff

ABLATIONS = ("corrupted", "mean", "zero")
METRICS = ("logit_diff", "prob_diff", "kl", "cross_entropy", "accuracy", "greater_than_prob_diff")
# Does a larger value of the metric mean the model does the task better?
HIGHER_IS_BETTER = {"logit_diff": True, "prob_diff": True, "accuracy": True, "kl": False, "cross_entropy": False,
                    "greater_than_prob_diff": True}


@dataclass(frozen=True, eq=False)
class DiscoveryTask:
    """Prompts, the metric read at the answer position, and what an ablated edge carries.

    ``corrupted`` doubles as the reference set for ``ablation="mean"``. ``batch_size``: how many prompts
    every method, evaluation and sweep on this task runs at once (``None``: all of them); results are
    the same either way (``discovery._batches``). ``shared_ablation``: ablation values computed once for
    the whole task (the mean over the whole reference set) and handed to each of its micro-batches.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "_batch pos"]
    metric: PositionMetric
    metric_key: str = "logit_diff"
    ablation: str = "corrupted"
    batch_size: int | None = None
    shared_ablation: Float[Tensor, "_b pos sources d_model"] | None = None

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise InputError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        split_rows(self.clean.shape[0], self.batch_size)  # refuses a batch_size that is not a positive int

    @property
    def position(self) -> int:
        return self.metric.position

    @property
    def n_prompts(self) -> int:
        return int(self.clean.shape[0])

    def ablated(self, model, graph: Graph) -> Tensor:
        """What an ablated edge carries on these prompts (``[batch or 1, pos, sources, d_model]``)."""
        if self.shared_ablation is not None:
            return self.shared_ablation
        return ablation_values(model, graph, self.ablation, self.clean, self.corrupted, batch_size=self.batch_size)


def make_metric(key: str, model, data, *, batch_size: int | None = None) -> PositionMetric:
    """Build a named metric for zoo-style task data (``clean``, ``answers``, ``wrong``, ``position``).

    ``kl``'s reference is the model's own logits on every clean prompt (one row per prompt, float32),
    computed ``batch_size`` prompts at a time."""
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
            reference = torch.cat([model(data.clean[r.index])[:, position].float()
                                   for r in split_rows(data.clean.shape[0], batch_size)])
        return KLDivergence(position=position, reference=reference)
    if key == "greater_than_prob_diff":
        return _greater_than_metric(model, data)
    raise InputError(f"unknown metric {key!r}; choose one of {', '.join(METRICS)}")


def _greater_than_metric(model, data) -> ThresholdProbDiff:
    """Hanna et al.'s ``sum p(y > YY) - sum p(y <= YY)`` over the model's two-digit year tokens; each
    prompt's YY is its ``wrong`` token (the greater-than task's convention, so a circuit file's tokens rebuild
    it)."""
    from ..tasks import TaskError, year_tokens

    try:
        years = year_tokens(model)
    except TaskError as e:
        raise InputError(str(e)) from None
    index = {token: i for i, token in enumerate(years)}
    wrong = [int(t) for t in data.wrong]
    if bad := [i + 1 for i, t in enumerate(wrong) if t not in index]:
        raise InputError(f"metric 'greater_than_prob_diff' reads each prompt's start year YY from its wrong token, "
                         f"but the wrong token of prompt(s) {', '.join(map(str, bad[:5]))} is not a two-digit year")
    return ThresholdProbDiff(position=data.position, candidates=years,
                             cutoff=torch.tensor([index[t] for t in wrong]))


def task_from_data(model, data, *, metric: str = "logit_diff", ablation: str = "corrupted",
                   batch_size: int | None = None) -> DiscoveryTask:
    """A :class:`DiscoveryTask` from a zoo :class:`~mechwork.models.zoo.TaskData`."""
    check_pair(model, data.clean, data.corrupted)
    return DiscoveryTask(data.clean, data.corrupted, make_metric(metric, model, data, batch_size=batch_size), metric,
                         ablation, batch_size)


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
