"""Sampled timings of the long runs (exact patching, the naive loop, ACDC) and their extrapolation to every edge.

The same procedure runs on the small model, where the full run is also measured, and on GPT-2 small, where
it is not; the small model's ratio (extrapolated / measured) says how far to trust GPT-2 small's figure.

* **exact**: ``discover(model, graph, task, "exact", nodes=False)`` itself runs, with its per-chunk worker
  wrapped: in every destination group (a layer's q/k/v inputs, a layer's MLP, the logits) one chunk of
  ``max_rows // batch`` consecutive edges from the middle of the group (as exact cuts its chunks) is
  computed and timed;
  the group's other chunks are skipped. Estimate = the run's wall time outside chunks (clean run,
  ablation values, set-up) + sum over groups of (edges in group) x (sampled seconds per edge).
* **naive**: ``samples`` edges per group, spread evenly over it (over exact's sampled chunk where the two
  are compared), through :func:`naive_edge_patching`;
  estimate = cache set-up + sum over groups of (edges in group) x (median seconds per sampled edge).
* **ACDC, every edge tested**: ``discover(..., "acdc", threshold=-inf)`` keeps every edge, so no node is
  ever disconnected and every edge gets its trial (the most ACDC can run). ACDC runs its trials in calls of
  one or more (a batch of one destination's trials); its loss is wrapped: per destination layer, the calls
  holding ``samples`` trials spread evenly over the layer's trials are computed and timed, the rest skipped
  (with threshold -inf every decision is "keep" whatever a call returns, so skipping changes no call).
  Calls are thus drawn with probability proportional to their size, and the layer's time is estimated as
  (trials into the layer) x (mean over timed calls of seconds per trial in the call). Estimate = wall time
  outside trials + the sum over layers.
"""

from __future__ import annotations

import inspect
import statistics
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from _naive import naive_edge_patching

from mechwork._nodes import parse_node
from mechwork.discovery import acdc as acdc_module
from mechwork.discovery import discover
from mechwork.discovery import exact as exact_module
from mechwork.graph import Graph


@dataclass
class Estimate:
    """An extrapolated total: ``fixed`` seconds plus per-group (edges, seconds per edge)."""

    fixed: float
    groups: dict = field(default_factory=dict)  # group -> (edges in group, seconds per edge)
    sampled: dict[int, float] = field(default_factory=dict)  # flat edge index -> score, for the sampled edges
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.fixed + sum(n * s for n, s in self.groups.values())

    @property
    def n_sampled(self) -> int:
        return len(self.sampled)


def groups(graph: Graph) -> list[tuple[int | None, str]]:
    """Destination groups in the order exact visits them."""
    return [(layer, kind) for layer in range(graph.n_layers) for kind in ("attn", "mlp")] + [(None, "logits")]


def spread(items: list, k: int) -> list:
    """``k`` items evenly spaced over ``items`` (all of them when there are no more than ``k``)."""
    if len(items) <= k:
        return list(items)
    return [items[(2 * i + 1) * len(items) // (2 * k)] for i in range(k)]


def middle(items: list, k: int) -> list:
    """``k`` consecutive items from the middle of ``items`` (all of them when there are no more than ``k``)."""
    first = max(0, (len(items) - k) // 2)
    return list(items[first : first + k])


def group_samples(graph: Graph, k: int) -> dict[tuple[int | None, str], list[int]]:
    """Per destination group, ``k`` consecutive flat edge indices from its middle: a chunk as exact itself
    cuts them (consecutive edges share a port and a head or two, which exact's per-head MLP products rely
    on; edges spread over every head made a sampled chunk dearer per edge than the run's own chunks). An
    attention group's middle is its k port's edges: under grouped-query attention a k row changes a group
    of query heads and costs a little more than a q row, so the estimate leans high there."""
    return {g: middle(list(graph.group_edges(*g)), k) for g in groups(graph)}


# ---- exact --------------------------------------------------------------------------------------
def sampled_exact(model, graph: Graph, task, per_group: int | None = None, max_rows: int = 512) -> Estimate:
    """Run exact with ``per_group`` edges (default: one chunk, ``max_rows // batch``), consecutive, from the
    middle of each destination group, computed as one chunk; see the module docstring."""
    original = exact_module._run_chunk
    signature = inspect.signature(original)
    for name in ("layer", "kind", "chunk"):
        if name not in signature.parameters:
            raise RuntimeError(f"exact._run_chunk no longer takes {name!r}: update benchmarks/_extrapolate.py")
    per_chunk = max(1, max_rows // task.clean.shape[0])
    samples = group_samples(graph, min(per_group or per_chunk, per_chunk))
    seen: set = set()
    chunk_seconds: dict = {}
    estimate = Estimate(0.0)

    def timed_chunk(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        layer, kind, chunk = (bound.arguments[n] for n in ("layer", "kind", "chunk"))
        if (layer, kind) in seen:
            return [0.0] * len(chunk)  # skipped: the group was sampled already
        seen.add((layer, kind))
        wanted = set(samples[(layer, kind)])
        bound.arguments["chunk"] = [c for c in exact_module._group_edges(graph, layer, kind) if c[0] in wanted]
        start = time.perf_counter()
        values = original(*bound.args, **bound.kwargs)
        chunk_seconds[(layer, kind)] = time.perf_counter() - start
        estimate.sampled.update(zip((c[0] for c in bound.arguments["chunk"]), values, strict=True))
        return [0.0] * len(chunk)

    exact_module._run_chunk = timed_chunk
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            discover(model, graph, task, "exact", nodes=False, max_rows=max_rows)
            wall = time.perf_counter() - start
    finally:
        exact_module._run_chunk = original
    estimate.warnings = sorted({str(w.message) for w in caught})
    if set(chunk_seconds) != set(samples):
        raise RuntimeError(f"exact visited {len(chunk_seconds)} of {len(samples)} destination groups")
    estimate.fixed = wall - sum(chunk_seconds.values())
    for g, seconds in chunk_seconds.items():
        estimate.groups[g] = (len(graph.group_edges(*g)), seconds / len(samples[g]))
    return estimate


def full_exact(model, graph: Graph, task, max_rows: int = 512) -> tuple[float, torch.Tensor, list[str]]:
    """(seconds, scores, warnings) of the whole ``discover(..., "exact", nodes=False)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = discover(model, graph, task, "exact", nodes=False, max_rows=max_rows)
        seconds = time.perf_counter() - start
    return seconds, result.scores, sorted({str(w.message) for w in caught})


# ---- naive --------------------------------------------------------------------------------------
def sampled_naive(model, graph: Graph, clean, corrupted, metric, samples: int,
                  within: dict[tuple, list[int]] | None = None) -> Estimate:
    """The naive loop on ``samples`` edges per group (spread over ``within[group]`` when given)."""
    chosen = {g: spread(within[g] if within else list(graph.group_edges(*g)), samples) for g in groups(graph)}
    names = [graph.edges[i] for g in groups(graph) for i in chosen[g]]
    run = naive_edge_patching(model, clean, corrupted, metric, names)
    estimate = Estimate(run.setup_seconds)
    for g in groups(graph):
        per_edge = statistics.median(run.seconds[graph.edges[i]] for i in chosen[g])
        estimate.groups[g] = (len(graph.group_edges(*g)), per_edge)
    estimate.sampled = {graph.index(name): score for name, score in run.scores.items()}
    return estimate


def full_naive(model, graph: Graph, clean, corrupted, metric) -> tuple[float, torch.Tensor]:
    """(seconds, scores in graph order) of the naive loop over every edge."""
    start = time.perf_counter()
    run = naive_edge_patching(model, clean, corrupted, metric, list(graph.edges))
    seconds = time.perf_counter() - start
    return seconds, torch.tensor([run.scores[e] for e in graph.edges])


# ---- ACDC ---------------------------------------------------------------------------------------
def _destination_layer(graph: Graph, edge_index: int) -> int:
    destination = parse_node(graph.nodes[graph.edge_endpoints[edge_index][1]])
    return graph.n_layers if destination.kind == "logits" else destination.layer


def edges_per_layer(graph: Graph) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for i in range(graph.n_edges):
        counts[_destination_layer(graph, i)] += 1
    return dict(counts)


def acdc_every_edge(model, graph: Graph, task, samples: int | None = None) -> tuple[float, Estimate, int]:
    """ACDC with every edge kept and tested. ``samples`` per destination layer (None: every trial runs).

    Returns (wall seconds, the estimate from the timed calls, trials run)."""
    counts = edges_per_layer(graph)
    wanted = {layer: set(spread(list(range(n)), samples)) for layer, n in counts.items()} if samples else None
    seen: dict[int, int] = defaultdict(int)  # trials offered so far, per layer
    per_trial: dict[int, list[float]] = defaultdict(list)  # seconds per trial of each timed call
    timed_trials = [0]
    trial_seconds = [0.0]
    original = acdc_module._Loss

    class TimedLoss(original):
        def __call__(self, masks, layer: int = 0):
            if masks.ndim == 1:  # the starting loss, not a trial
                return super().__call__(masks, layer)
            first = seen[layer]
            seen[layer] += len(masks)
            if wanted and not wanted[layer] & set(range(first, first + len(masks))):
                return [0.0] * len(masks)  # skipped; with threshold -inf every edge is restored whatever is returned
            start = time.perf_counter()
            values = super().__call__(masks, layer)
            seconds = time.perf_counter() - start
            per_trial[layer].append(seconds / len(masks))
            timed_trials[0] += len(masks)
            trial_seconds[0] += seconds
            return values

    acdc_module._Loss = TimedLoss
    try:
        start = time.perf_counter()
        discover(model, graph, task, "acdc", threshold=float("-inf"))
        wall = time.perf_counter() - start
    finally:
        acdc_module._Loss = original
    if dict(seen) != counts:
        raise RuntimeError(f"ACDC ran {sum(seen.values())} trials for {graph.n_edges} edges")
    estimate = Estimate(wall - trial_seconds[0])
    for layer, n in counts.items():
        estimate.groups[layer] = (n, statistics.mean(per_trial[layer]))
    return wall, estimate, timed_trials[0]
