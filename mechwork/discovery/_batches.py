"""A :class:`DiscoveryTask` split into micro-batches, and the one helper every method adds them up with.

:func:`micro_batches` plans the split once: ``task.batch_size`` prompts at a time (``None``: one batch,
the task itself), each micro-batch a :class:`DiscoveryTask` of its own prompts with the metric sliced
to them (``PositionMetric.for_rows``: answers, wrong tokens, KL's reference logits) and its weight
``n_b / N``. Ablation values that belong to the whole task, the mean over the whole reference set
(computed by micro-batches too) or zeros, are computed once and shared; ``corrupted`` ablation is per
prompt, so each micro-batch runs its own corrupted prompts.

:func:`accumulate` is ``sum_b weight_b * fn(batch_b)``: because every metric is a mean over prompts,
that is exactly what one big batch gives, for metric values, metric differences, gradients and the edge
attributions built from them (see ``mechwork._batching``). Quantities that are not means over prompts
(faithfulness, a ratio of means; ACDC's ``|M(circuit) - M(full)|``) are computed by their callers from
accumulated means. :class:`PerBatch` keeps what a method builds per micro-batch (embeddings, ablation
values, a clean run) between uses only when there is one batch: with several, each use rebuilds it,
so memory is set by ``batch_size``, not by the number of prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .._batching import Rows, split_rows, weighted_sum
from ..graph import Graph
from ..hooks._validation import InputError
from ._types import DiscoveryTask

__all__ = ["Batch", "PerBatch", "accumulate", "micro_batches"]

T = TypeVar("T")
S = TypeVar("S")


@dataclass(frozen=True)
class Batch:
    """One micro-batch: its own task (its prompts, the metric sliced to them) and which rows it holds."""

    task: DiscoveryTask
    rows: Rows

    @property
    def weight(self) -> float:
        return self.rows.weight


def micro_batches(model, graph: Graph, task: DiscoveryTask) -> tuple[Batch, ...]:
    """``task`` split into micro-batches of ``task.batch_size`` prompts (the last one may be smaller)."""
    plan = split_rows(task.n_prompts, task.batch_size)
    if len(plan) == 1:
        return (Batch(task, plan[0]),)
    if not getattr(task.metric, "mean_over_prompts", False):
        raise InputError(f"{type(task.metric).__name__} does not declare itself a mean over prompts "
                         "(PositionMetric.mean_over_prompts); run it with batch_size=None")
    shared = task.ablated(model, graph) if task.ablation != "corrupted" else None
    n = task.n_prompts

    def part(rows: Rows) -> Batch:
        i = rows.index
        corrupted = task.corrupted[i] if task.ablation == "corrupted" else task.corrupted
        sub = dataclasses.replace(task, clean=task.clean[i], corrupted=corrupted, metric=task.metric.for_rows(i, n),
                                  batch_size=None, shared_ablation=shared)
        return Batch(sub, rows)

    return tuple(part(rows) for rows in plan)


def accumulate(batches: tuple[Batch, ...], fn: Callable[[DiscoveryTask], T]) -> T:
    """``sum_b weight_b * fn(batch_b.task)``: what ``fn`` gives on all the prompts at once, for anything
    linear in the metric (tensors summed in float32; tuples, lists and dicts of them element-wise)."""
    return weighted_sum((b.weight, fn(b.task)) for b in batches)


class PerBatch(Generic[S]):
    """What ``build`` makes from each micro-batch's task, for repeated use (a circuit evaluator's or
    ACDC's many runs): kept when there is one batch, rebuilt on every use when there are several."""

    def __init__(self, batches: tuple[Batch, ...], build: Callable[[DiscoveryTask], S]):
        self.batches, self.build = batches, build
        self._kept: S | None = build(batches[0].task) if len(batches) == 1 else None

    def first(self) -> S:
        """The first micro-batch's state (e.g. to read shapes)."""
        return self._kept if self._kept is not None else self.build(self.batches[0].task)

    def items(self) -> Iterator[tuple[float, S]]:
        """``(weight, state)`` for every micro-batch, one state alive at a time when they are rebuilt."""
        if self._kept is not None:
            yield 1.0, self._kept
            return
        for b in self.batches:
            yield b.weight, self.build(b.task)

    def total(self, fn: Callable[[S], T]) -> T:
        """``sum_b weight_b * fn(state_b)``."""
        return weighted_sum((w, fn(state)) for w, state in self.items())
