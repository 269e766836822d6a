"""Micro-batches of prompts, and the one way results over them are added up.

Every metric mechwork reads is a mean over prompts of a per-prompt value (``PositionMetric``), so a
result over ``N`` prompts split into micro-batches of ``n_b`` prompts is exactly

    sum_b (n_b / N) * result_b

where ``result_b`` is the same computation on batch ``b`` alone (with the metric's per-prompt data
sliced to it): metric values, metric differences, gradients of the metric and everything linear in
them (edge attributions, patching sweeps). :func:`split_rows` makes the plan (which rows, which
weight) and :func:`weighted_sum` adds results up; every caller in mechwork goes through these two, so
a wrong weighting (a mean of per-batch means when the batches differ in size) cannot hide in one of
them. Quantities that are not means over prompts (a ratio of means such as faithfulness, the absolute
value of a metric difference) are computed from the accumulated means, never per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["Rows", "model_device", "model_dtype", "over_rows", "split_rows", "weighted_sum", "weights_of"]

T = TypeVar("T")


@dataclass(frozen=True)
class Rows:
    """One micro-batch: prompts ``start:stop`` of ``total``, and its share ``weight`` of every mean."""

    start: int
    stop: int
    total: int
    weight: float

    @property
    def index(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        """The batch is every prompt (nothing to slice)."""
        return self.start == 0 and self.stop == self.total


def weights_of(sizes: list[int]) -> list[float]:
    """Each batch's share of a mean over all prompts: ``n_b / N``."""
    total = sum(sizes)
    return [size / total for size in sizes]


def split_rows(n: int, batch_size: int | None) -> tuple[Rows, ...]:
    """``n`` prompts in order, ``batch_size`` at a time (the last batch may be smaller); ``None``: one batch."""
    if n <= 0:
        raise ValueError(f"need at least one prompt, got {n}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    size = n if batch_size is None else min(int(batch_size), n)
    starts = list(range(0, n, size))
    stops = [min(s + size, n) for s in starts]
    shares = weights_of([b - a for a, b in zip(starts, stops, strict=True)])
    return tuple(Rows(a, b, n, w) for a, b, w in zip(starts, stops, shares, strict=True))


def _scaled_add(total, value, weight: float):
    """``total + weight * value`` for a tensor, a number, or a tuple/list/dict of them (None: start)."""
    if isinstance(value, dict):
        base = total or {}
        return {k: _scaled_add(base.get(k), v, weight) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        base = total or [None] * len(value)
        return type(value)(_scaled_add(t, v, weight) for t, v in zip(base, value, strict=True))
    if isinstance(value, Tensor):
        half = value.is_floating_point() and value.dtype not in (torch.float32, torch.float64)
        part = value.detach().to(torch.float32 if half else value.dtype) * weight
        return part if total is None else total + part
    part = float(value) * weight
    return part if total is None else total + part


def weighted_sum(parts: Iterable[tuple[float, T]]) -> T:
    """``sum_b weight_b * value_b`` over ``(weight, value)`` pairs whose values are tensors, numbers, or
    tuples/lists/dicts of them (the same structure in every batch): tensors in float32 at least (half
    precision is upcast; float64 stays), numbers in float64. Each value is consumed as it comes: only the
    running total is kept."""
    total = None
    seen = False
    for weight, value in parts:
        total = _scaled_add(total, value, weight)
        seen = True
    if not seen:
        raise ValueError("nothing to add up: no batches")
    return total


def over_rows(rows: tuple[Rows, ...], fn: Callable[[Rows], T]) -> Iterator[tuple[float, T]]:
    """``(weight, fn(rows))`` for every batch, lazily: feed it to :func:`weighted_sum`."""
    for r in rows:
        yield r.weight, fn(r)


def model_device(model) -> torch.device:
    """Where the model's weights are (the first parameter's device; CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32

