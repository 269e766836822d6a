"""Exact edge patching spread over an executor's workers: each unit one micro-batch and a set of
destination groups (a layer's heads, a layer's MLP, the logits), or one micro-batch's node scores.

A worker loads the model once (weights hash checked against the driver's), reruns the micro-batch's clean
pass (one forward, cheap next to the hundreds its groups take) and returns the scores of its groups'
edges. The driver adds a micro-batch's group scores (disjoint edges: the sum is exact) and then the
micro-batches with their weights in batch order, as the local run does.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .._batching import weighted_sum
from ..executors import ModelSpec, Unit, executor_from
from ..graph import Graph, source_deltas
from ._batches import Batch
from ._exact_fast import fast_exact_for
from ._types import DiscoveryTask


def _split(groups: list, graph: Graph, parts: int) -> list[list]:
    """Consecutive groups in ``parts`` sets of about equal edge counts (the cost of a unit)."""
    from .exact import _group_edges

    sizes = [len(_group_edges(graph, layer, kind)) for layer, kind in groups]
    target, sets, current, filled = sum(sizes) / max(1, parts), [], [], 0
    for group, size in zip(groups, sizes, strict=True):
        current.append(group)
        filled += size
        if filled >= target * (len(sets) + 1) and len(sets) < parts - 1:
            sets.append(current)
            current = []
    return [*sets, current] if current else sets


@torch.no_grad()
def group_scores(context, payload: tuple) -> Float[Tensor, " edges"]:
    """A unit: the metric change of every edge into ``groups`` on one micro-batch (zeros elsewhere)."""
    from .exact import _clean_run, groups_scores

    spec, graph, task, groups, max_rows, pieces = payload
    model = context.model(spec)
    clean = _clean_run(model, graph, task)
    fast = fast_exact_for(model, clean.resid_pre, task.position) if pieces else None
    deltas = source_deltas(model, graph, clean.outputs, task.ablated(model, graph))
    return groups_scores(model, graph, task, clean, deltas, fast, groups, max_rows)


@torch.no_grad()
def node_scores(context, payload: tuple) -> dict[str, float]:
    from .exact import _clean_run, node_patching_scores

    spec, graph, task = payload
    model = context.model(spec)
    return node_patching_scores(model, graph, task, task.ablated(model, graph), _clean_run(model, graph, task).value)


def spread_exact(model, graph: Graph, batches: tuple[Batch, ...], executor, *, max_rows: int, nodes: bool,
                 pieces: bool, units_per_batch: int | None = None) -> dict:
    """``{"edges": scores, "nodes": ...}`` as the local exact run accumulates them, computed on ``executor``."""
    spec = ModelSpec.of(model)
    runner = executor_from(executor)
    parts = units_per_batch or max(1, 2 * runner.workers or 2)
    from .exact import destination_groups

    sets = _split(destination_groups(graph), graph, parts)
    units = []
    for i, batch in enumerate(batches):
        task: DiscoveryTask = batch.task
        units += [Unit(f"batch{i}/groups{j}", group_scores, (spec, graph, task, groups, max_rows, pieces), model=spec)
                  for j, groups in enumerate(sets)]
        if nodes:
            units.append(Unit(f"batch{i}/nodes", node_scores, (spec, graph, task), model=spec))
    try:
        results = runner.run(units)
    finally:
        if runner is not executor:
            runner.close()
    per_batch = []
    for i, batch in enumerate(batches):
        out = {"edges": sum(results[f"batch{i}/groups{j}"] for j in range(len(sets)))}
        if nodes:
            out["nodes"] = results[f"batch{i}/nodes"]
        per_batch.append((batch.weight, out))
    return weighted_sum(per_batch)
