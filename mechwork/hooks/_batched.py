"""Patching sweeps over any number of prompts, ``batch_size`` at a time, adding up as one batch would.

Every value a sweep reports (a patched run's metric, the clean and corrupted runs' metric, an
attribution estimate ``metric + grad . delta``) is a mean over prompts, or linear in one, so the sweep
over all prompts is ``sum_b (n_b / N) * sweep_b`` (``mechwork._batching``). :func:`micro_batched` gives a
sweep function a ``batch_size`` keyword that does exactly that: the prompts and the metric's
per-prompt data (``PositionMetric.for_rows``) are sliced, each micro-batch runs the sweep on its own,
and only its result (a few numbers per variant) is kept until the next one is added.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TypeVar

from .._batching import split_rows, weighted_sum
from ..metrics import PositionMetric
from ._result import PatchingResult
from ._validation import InputError

__all__ = ["combine_results", "micro_batched"]

F = TypeVar("F", bound=Callable)


def combine_results(parts: Iterable[tuple[float, PatchingResult | float]]) -> PatchingResult | float:
    """The weighted sum of micro-batch results: numbers, or :class:`PatchingResult`'s values and its clean
    and corrupted metric values (labels from the first)."""
    first: list[PatchingResult] = []

    def numbers(result):
        if not isinstance(result, PatchingResult):
            return result
        if not first:
            first.append(result)
        return (result.values, result.clean_value, result.corrupted_value)

    total = weighted_sum((w, numbers(r)) for w, r in parts)
    if not first:
        return total
    values, clean, corrupted = total
    return dataclasses.replace(first[0], values=values.cpu().float(), clean_value=clean, corrupted_value=corrupted)


def micro_batched(fn: F) -> F:
    """Give a sweep ``fn(model, clean, corrupted, metric, ...)`` a ``batch_size`` keyword (``None``: one
    batch); the metric must then be a :class:`PositionMetric` that is a mean over prompts."""

    @functools.wraps(fn)
    def run(model, clean, corrupted, metric, *args, batch_size: int | None = None, **kwargs):
        rows = split_rows(clean.shape[0], batch_size) if batch_size is not None else ()
        if len(rows) <= 1:  # one batch: the sweep as it is (and its own errors, e.g. for no prompts)
            return fn(model, clean, corrupted, metric, *args, **kwargs)
        if not (isinstance(metric, PositionMetric) and metric.mean_over_prompts):
            raise InputError(f"batch_size={batch_size}: micro-batching needs a PositionMetric that is a mean over "
                             "prompts (its per-prompt data is sliced per batch); use batch_size=None for this metric")
        if corrupted.shape[0] != clean.shape[0]:
            raise InputError(f"clean has {clean.shape[0]} prompts, corrupted {corrupted.shape[0]}: they are paired")
        n = clean.shape[0]
        return combine_results((r.weight, fn(model, clean[r.index], corrupted[r.index], metric.for_rows(r.index, n),
                                             *args, **kwargs)) for r in rows)

    signature = inspect.signature(fn)
    extra = inspect.Parameter("batch_size", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None")
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])
    return run  # type: ignore[return-value]
