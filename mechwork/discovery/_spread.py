"""Micro-batches of a discovery method spread over an executor's workers, added up as the local run does.

:func:`spread_batches` is the one place a method's micro-batches become units: every micro-batch times
every piece of :class:`BatchWork` is a unit ``fn(model, graph, batch_task, *args)`` run on a worker,
which loads the model once (weights hash checked against the driver's: ``ModelSpec.of``) and keeps it
for its later units. The driver adds a micro-batch's pieces of the same name in piece order, then the
micro-batches with their weights in batch order (``weighted_sum``, as :func:`~._batches.accumulate`
does locally), so neither the number of workers nor the order units finish in changes the result.

Two users: :func:`summed_over_batches` (EAP, EAP-IG: one unit per micro-batch, scores summed) and
:func:`spread_exact` (exact patching: each micro-batch's destination groups cut into sets of about
equal cost, disjoint edges so their sum is exact, plus a node-patching unit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .._batching import weighted_sum
from ..executors import ModelSpec, Unit, executor_from
from ..graph import Graph
from ._batches import Batch, accumulate, micro_batches
from ._types import DiscoveryTask


@dataclass(frozen=True)
class BatchWork:
    """One piece of every micro-batch's work: ``fn(model, graph, task, *args)`` on a worker. ``fn`` must be a
    module-level function (sent by reference); pieces sharing a ``name`` are summed."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()


def _on_worker(context, payload: tuple) -> Any:
    """A unit: one piece of one micro-batch, on the worker's copy of the model; tensors come back on the CPU
    (a GPU worker's results must reach a driver that may have none)."""
    spec, graph, task, work = payload
    result = work.fn(context.model(spec), graph, task, *work.args)
    return result.cpu() if isinstance(result, Tensor) else result


def spread_batches(model, graph: Graph, batches: tuple[Batch, ...], executor,
                   work: Sequence[BatchWork]) -> dict[str, Any]:
    """``{name: sum_b weight_b * (sum of the pieces named so on batch b)}``, the pieces run on ``executor``
    (``"ray"``, ``"ray:ADDRESS"`` or an :class:`~mechwork.executors.Executor`; one made here is closed here)."""
    spec = ModelSpec.of(model)
    units = [Unit(f"batch{i}/piece{j}:{piece.name}", _on_worker, (spec, graph, batch.task, piece), model=spec)
             for i, batch in enumerate(batches) for j, piece in enumerate(work)]
    runner = executor_from(executor)
    try:
        results = runner.run(units)
    finally:
        if runner is not executor:
            runner.close()
    per_batch = []
    for i, batch in enumerate(batches):
        summed: dict[str, Any] = {}
        for j, piece in enumerate(work):  # in piece order, whatever order the units finished in
            value = results[f"batch{i}/piece{j}:{piece.name}"]
            summed[piece.name] = value if piece.name not in summed else summed[piece.name] + value
        per_batch.append((batch.weight, summed))
    return weighted_sum(per_batch)


def summed_over_batches(model, graph: Graph, task: DiscoveryTask, fn: Callable[..., Float[Tensor, " edges"]], *args,
                        executor=None) -> Float[Tensor, " edges"]:
    """``sum_b weight_b * fn(model, graph, batch_b, *args)``, edge scores summed over ``task``'s micro-batches:
    in this process without ``executor``, else one unit per micro-batch on its workers (same sum, same order)."""
    batches = micro_batches(model, graph, task)
    if executor is None:
        return accumulate(batches, lambda b: fn(model, graph, b, *args))
    return spread_batches(model, graph, batches, executor, [BatchWork("scores", fn, args)])["scores"]


def _group_cost(graph: Graph, layer: int | None, kind: str) -> float:
    """About what patching the edges into one destination group costs: per edge, the blocks still run after
    the destination's layer, plus half a block for that layer's own pieces (or, for the logits, the final
    norm and unembedding). Edges into early layers cost several times those into late ones (measured:
    8.4, 4.9, 2.7 and 0.7 ms per edge into layers 0-3 of a 4-layer GPT-2), so edge counts alone
    balance units badly."""
    from .exact import _group_edges

    blocks_after = 0 if layer is None else graph.n_layers - layer - 1
    return len(_group_edges(graph, layer, kind)) * (blocks_after + 0.5)


def _split(groups: list, graph: Graph, parts: int) -> list[list]:
    """The groups in at most ``parts`` sets of about equal cost: costliest group first, each into the set
    with the least cost so far (deterministic; the sets' edges are disjoint, so any grouping sums exactly)."""
    sets: list[list] = [[] for _ in range(max(1, parts))]
    totals = [0.0] * len(sets)
    costs = [_group_cost(graph, layer, kind) for layer, kind in groups]
    for index in sorted(range(len(groups)), key=lambda i: -costs[i]):
        cheapest = totals.index(min(totals))
        sets[cheapest].append(groups[index])
        totals[cheapest] += costs[index]
    return [s for s in sets if s]


@torch.no_grad()
def exact_group_scores(model, graph: Graph, task: DiscoveryTask, groups: list, max_rows: int,
                       pieces: bool) -> Float[Tensor, " edges"]:
    """The metric change of every edge into ``groups`` on one micro-batch (zeros elsewhere), by the local
    run's own path (so the sums agree to the bit). Reruns the micro-batch's clean pass: one forward, cheap
    next to the hundreds its groups take; the layer pieces are checked once per unit."""
    from .exact import _clean_run, _Pieces, batch_group_scores

    clean = _clean_run(model, graph, task)
    return batch_group_scores(model, graph, task, clean, task.ablated(model, graph), _Pieces(pieces), groups,
                              max_rows)


@torch.no_grad()
def exact_node_scores(model, graph: Graph, task: DiscoveryTask) -> dict[str, float]:
    from .exact import _clean_run, node_patching_scores

    return node_patching_scores(model, graph, task, task.ablated(model, graph), _clean_run(model, graph, task).value)


def spread_exact(model, graph: Graph, batches: tuple[Batch, ...], executor, *, max_rows: int, nodes: bool,
                 pieces: bool, units_per_batch: int | None = None) -> dict:
    """``{"edges": scores, "nodes": ...}`` as the local exact run accumulates them, computed on ``executor``:
    each micro-batch's destination groups in ``units_per_batch`` units (default: twice the workers)."""
    from .exact import destination_groups

    runner = executor_from(executor)
    try:
        parts = units_per_batch or max(1, 2 * runner.workers or 2)
        sets = _split(destination_groups(graph), graph, parts)
        work = [BatchWork("edges", exact_group_scores, (groups, max_rows, pieces)) for groups in sets]
        if nodes:
            work.append(BatchWork("nodes", exact_node_scores))
        return spread_batches(model, graph, batches, runner, work)
    finally:
        if runner is not executor:
            runner.close()
