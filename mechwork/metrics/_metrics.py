"""Task metrics: scalar functions of a model's logits.

Every metric here reads the logits at one answer position, so it is a :class:`PositionMetric`:
callers that only need that position (the fast patching engine) compute the unembedding there
alone and call :meth:`PositionMetric.score` on ``[batch, vocab]`` logits.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

_PER_PROMPT = re.compile(r"""Tensor,\s*["']\s*batch\b""")  # a field annotated Float[Tensor, "batch ..."]


class MetricError(ValueError):
    """A metric was given data it cannot score (wrong shapes, empty batch, non-scalar result)."""


@dataclass(frozen=True, eq=False)
class PositionMetric:
    """A metric of the logits at one sequence position (``position`` may be negative)."""

    position: int = -1
    name: str = field(default="metric", init=False)
    #: ``score`` is the mean over the batch of one value per prompt, so micro-batches weighted by their
    #: sizes add up to it exactly (``mechwork._batching``). A metric for which that is not so sets this
    #: False, and every micro-batched run refuses it.
    mean_over_prompts: ClassVar[bool] = True

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        raise NotImplementedError

    def for_rows(self, rows: slice, n: int) -> PositionMetric:
        """This metric for prompts ``rows`` of the ``n`` it was built for: every per-prompt field (a tensor
        annotated with a leading ``batch`` axis, e.g. ``Int[Tensor, " batch"]``) is sliced, the rest shared."""
        if rows == slice(0, n):
            return self
        if not self.mean_over_prompts:
            raise MetricError(f"{self.name} is not a mean over prompts: it cannot be computed by micro-batches")
        sliced = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.init and isinstance(value, Tensor) and _PER_PROMPT.search(str(f.type)):
                if value.ndim == 0 or value.shape[0] != n:
                    raise MetricError(f"{self.name}: {f.name} has {value.shape[0] if value.ndim else 0} rows, "
                                      f"the metric is being split over {n} prompts")
                sliced[f.name] = value[rows]
        return dataclasses.replace(self, **sliced)

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        if logits.ndim != 3:
            raise MetricError(f"{self.name} expects logits [batch, pos, vocab], got shape {tuple(logits.shape)}")
        return self.score(logits[:, self.position])

    def _check_batch(self, logits: Tensor, *per_example: Tensor) -> None:
        if logits.shape[0] == 0:
            raise MetricError(f"{self.name}: empty batch")
        for t in per_example:
            if t.shape[0] != logits.shape[0]:
                raise MetricError(
                    f"{self.name}: logits have batch {logits.shape[0]} but the metric was built for "
                    f"batch {t.shape[0]}"
                )


def _gather(logits: Float[Tensor, "batch vocab"], tokens: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    return logits.gather(-1, tokens.to(logits.device).unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True, eq=False)
class LogitDiff(PositionMetric):
    """Mean of logit[answer] - logit[wrong] at ``position``."""

    answers: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    wrong: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    name: str = field(default="logit difference", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.answers, self.wrong)
        return (_gather(logits, self.answers) - _gather(logits, self.wrong)).mean()


@dataclass(frozen=True, eq=False)
class ProbDiff(PositionMetric):
    """Mean of p[answer] - p[wrong] at ``position``."""

    answers: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    wrong: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    name: str = field(default="probability difference", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.answers, self.wrong)
        probs = logits.softmax(-1)
        return (_gather(probs, self.answers) - _gather(probs, self.wrong)).mean()


@dataclass(frozen=True, eq=False)
class ThresholdProbDiff(PositionMetric):
    """Mean of p(candidates after the prompt's cutoff) - p(candidates up to and including it) at ``position``.

    ``candidates``: ordered token ids (for greater-than, the years ``00`` .. ``99``); ``cutoff[i]``: the index
    into them of prompt i's threshold (its start year YY): Hanna et al.'s ``sum p(y > YY) - sum p(y <= YY)``.
    ``candidates`` is a tuple, not a tensor, so micro-batching never slices it as if it were per prompt.
    """

    candidates: tuple[int, ...] = ()
    cutoff: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    name: str = field(default="probability difference above the cutoff", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.cutoff)
        if not self.candidates:
            raise MetricError(f"{self.name}: no candidate tokens")
        probs = logits.softmax(-1)[:, list(self.candidates)]
        index = torch.arange(len(self.candidates), device=logits.device)
        sign = torch.where(index[None, :] > self.cutoff.to(logits.device)[:, None], 1.0, -1.0).to(probs.dtype)
        return (probs * sign).sum(-1).mean()


@dataclass(frozen=True, eq=False)
class CrossEntropy(PositionMetric):
    """Mean cross-entropy of the answer token at ``position`` (lower is better)."""

    answers: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    name: str = field(default="cross-entropy", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.answers)
        return -_gather(logits.log_softmax(-1), self.answers).mean()


@dataclass(frozen=True, eq=False)
class Accuracy(PositionMetric):
    """Fraction of examples whose answer wins: over ``wrong`` if given, else over the whole vocabulary.

    Not differentiable; use it to report, not to attribute.
    """

    answers: Int[Tensor, " batch"] = None  # type: ignore[assignment]
    wrong: Int[Tensor, " batch"] | None = None
    name: str = field(default="accuracy", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.answers)
        answers = self.answers.to(logits.device)
        if self.wrong is None:
            return (logits.argmax(-1) == answers).float().mean()
        return (_gather(logits, answers) > _gather(logits, self.wrong)).float().mean()


@dataclass(frozen=True, eq=False)
class KLDivergence(PositionMetric):
    """Mean KL(reference || model) at ``position``; ``reference`` are the reference run's logits there."""

    reference: Float[Tensor, "batch vocab"] = None  # type: ignore[assignment]
    name: str = field(default="KL divergence", init=False)

    def score(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        self._check_batch(logits, self.reference)
        ref_logp = self.reference.to(logits.device, logits.dtype).log_softmax(-1)
        logp = logits.log_softmax(-1)
        return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()


def metric_value(metric, logits: Tensor) -> Tensor:
    """``metric`` on ``logits`` read in float32 (a bfloat16 or float16 model's logits are upcast first, so
    softmaxes and means over prompts are not rounded to half precision). A :class:`PositionMetric` takes
    ``[batch, vocab]`` logits at its position or ``[batch, pos, vocab]``; any other callable what it is given."""
    if logits.is_floating_point() and logits.dtype != torch.float64:
        logits = logits.float()
    if isinstance(metric, PositionMetric):
        return metric(logits) if logits.ndim == 3 else metric.score(logits)
    return metric(logits)


def as_scalar(value: object, metric_name: str) -> float:
    """Check that a metric returned one number and convert it; a clear error otherwise."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise MetricError(
                f"metric {metric_name!r} must return a scalar, got a tensor of shape {tuple(value.shape)}; "
                "reduce it (e.g. .mean()) over the batch"
            )
        return float(value.detach().item())
    raise MetricError(f"metric {metric_name!r} must return a scalar tensor or float, got {type(value).__name__}")


def metric_name(metric: object) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__
