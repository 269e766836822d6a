"""Exact edge patching: the metric with each edge (alone) ablated, for every edge; and node patching.

Ablating u->d changes nothing below d's layer, so every run starts from the clean residual stream
entering that layer; the edges into one layer are stacked along the batch, each row block carrying
one edge's edit at the layer's q/k/v or MLP input; the bridge's per-head edge hooks are on only for
that one block; the unembedding is computed at the metric's position only. Logit edges need no
block at all: the final residual minus the edge's delta goes straight to the unembedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..graph import PORTS, Graph, clean_start, run_circuit, source_deltas
from ..hooks._edge_points import edge_flag_values, head_input_hooks, mlp_input_hooks
from ..hooks._runner import embed, run_layer_then_rest
from ..metrics import as_scalar, metric_name, metric_value
from ._batches import accumulate, micro_batches
from ._exact_fast import FastExact, fast_exact_for
from ._layer_pieces import LayerPieces
from ._registry import register_method
from ._types import DiscoveryTask, EdgeScores


@dataclass(frozen=True)
class _CleanRun:
    outputs: Tensor  # [batch, pos, sources, d_model]
    resid_pre: list[Tensor]  # per layer, and the final residual last
    value: float


@torch.no_grad()
def _clean_run(model, graph: Graph, task: DiscoveryTask) -> _CleanRun:
    start = clean_start(model, graph, embed(model, task.clean), position=task.position)
    value = as_scalar(metric_value(task.metric, start.logits), metric_name(task.metric))
    return _CleanRun(start.outputs, start.resid_pre, value)


def _edge_deltas(deltas: Tensor, sources: Tensor, positions: Tensor | None, batch: int) -> Tensor:
    """``[edges, batch, pos, d]``: what each edge's ablation subtracts from its destination's input."""
    chosen = deltas[:, :, sources].permute(2, 0, 1, 3).expand(len(sources), batch, -1, -1)
    if positions is None:
        return chosen
    onehot = torch.nn.functional.one_hot(positions, deltas.shape[1]).to(chosen.dtype)  # [edges, pos]
    return chosen * onehot[:, None, :, None]


def _scores_of(logits: Tensor, metric, n_edges: int, batch: int, base: float) -> list[float]:
    per_edge = logits.reshape(n_edges, batch, -1)
    name = metric_name(metric)
    return [as_scalar(metric_value(metric, per_edge[i]), name) - base for i in range(n_edges)]


def _group_edges(graph: Graph, layer: int | None, kind: str) -> list[tuple[int, int, int, int, int | None]]:
    """(flat edge index, port, head, source, position) for the edges into one destination group."""
    layout = []
    positions = range(graph.positions) if graph.positions else [None]
    per_position = graph.n_edges_per_position
    for p_index, pos in enumerate(positions):
        offset = p_index * per_position
        for i in graph.group_edges(layer, kind):
            e_port, e_head, e_src = graph.edge_coordinates(i)
            layout.append((offset + i, e_port, e_head, e_src, pos))
    return layout


def _run_chunk(model, graph, task, clean: _CleanRun, deltas, layer, kind, chunk,
               fast: FastExact | None = None) -> list[float]:
    batch = task.n_prompts
    n = len(chunk)
    sources = torch.tensor([c[3] for c in chunk], device=deltas.device)
    positions = torch.tensor([c[4] for c in chunk], device=deltas.device) if graph.positions else None
    edits = _edge_deltas(deltas, sources, positions, batch)  # [n, batch, pos, d]
    if fast is not None and kind in ("attn", "mlp"):
        # the pieces may compute only the logits the metric reads: fast.metric scores those
        metric = task.metric if fast.metric is None else fast.metric
        if kind == "mlp":
            return _scores_of(fast.mlp_edges(layer, edits), metric, n, batch, clean.value)
        ports = torch.tensor([c[1] for c in chunk], device=deltas.device)
        heads = torch.tensor([c[2] for c in chunk], device=deltas.device)
        return _scores_of(fast.head_edges(layer, ports, heads, edits), metric, n, batch, clean.value)
    if kind == "logits":
        final = clean.resid_pre[-1].unsqueeze(0) - edits
        logits = run_layer_then_rest(model, final.flatten(0, 1), graph.n_layers, position=task.position,
                                     layer_hooks=(), flags={})
        return _scores_of(logits, task.metric, n, batch, clean.value)
    resid = clean.resid_pre[layer].unsqueeze(0).expand(n, -1, -1, -1).flatten(0, 1)
    if kind == "mlp":
        def edit_mlp(act: Tensor) -> Tensor:
            return act - edits.flatten(0, 1).to(act.dtype)

        hooks = mlp_input_hooks(model, layer, edit_mlp)
    else:
        hooks = []
        for p, port in enumerate(PORTS):
            rows = [i for i, c in enumerate(chunk) if c[1] == p]
            if not rows:
                continue
            rows_t = torch.tensor(rows, device=deltas.device)
            heads_t = torch.tensor([chunk[i][2] for i in rows], device=deltas.device)

            def edit_head(act: Tensor, rows_t=rows_t, heads_t=heads_t) -> Tensor:
                act = act.clone().view(n, batch, *act.shape[1:])  # [n, batch, pos, heads, d]
                act[rows_t, :, :, heads_t] -= edits[rows_t].to(act.dtype)
                return act.flatten(0, 1)

            hooks += head_input_hooks(model, layer, port, edit_head)
    flags = edge_flag_values(model, outputs=False, inputs=True)
    logits = run_layer_then_rest(model, resid, layer, position=task.position, layer_hooks=hooks, flags=flags)
    return _scores_of(logits, task.metric, n, batch, clean.value)


@torch.no_grad()
def node_patching_scores(model, graph: Graph, task: DiscoveryTask, ablated: Tensor, base: float) -> dict[str, float]:
    """Metric change when a node's output is ablated for every downstream node (all its out-edges)."""
    scores = {}
    sources = graph.endpoint_tensor[:, 0]
    for index, node in enumerate(graph.sources):
        mask = (sources != index).float()
        logits = run_circuit(model, graph, task.clean, mask, ablated, position=task.position)
        scores[node] = as_scalar(metric_value(task.metric, logits), metric_name(task.metric)) - base
    return scores


@dataclass
class _Pieces:
    """Whether to use the layer pieces: checked on the first micro-batch, then kept for the others."""

    wanted: bool
    checked: bool = False
    layers: LayerPieces | None = None  # the model's weights laid out for the pieces, built once

    def for_batch(self, model, clean: _CleanRun, task: DiscoveryTask) -> FastExact | None:
        if not self.wanted:
            return None
        fast = fast_exact_for(model, clean.resid_pre, task.position, task.metric, check=not self.checked,
                              pieces=self.layers)
        self.wanted, self.checked = fast is not None, True
        self.layers = None if fast is None else fast.pieces
        return fast


def destination_groups(graph: Graph) -> list[tuple[int | None, str]]:
    """Where edges end, in the order exact patching visits them: each layer's heads, its MLP, the logits."""
    return [(layer, kind) for layer in range(graph.n_layers) for kind in ("attn", "mlp")] + [(None, "logits")]


@torch.no_grad()
def groups_scores(model, graph: Graph, task: DiscoveryTask, clean: _CleanRun, deltas: Tensor,
                  fast: FastExact | None, groups, max_rows: int, bar: tqdm | None = None) -> Tensor:
    """The metric change of every edge into ``groups`` (float64; zeros for the edges of other groups)."""
    per_chunk = max(1, max_rows // task.n_prompts)
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    for layer, kind in groups:
        layout = _group_edges(graph, layer, kind)
        for start in range(0, len(layout), per_chunk):
            chunk = layout[start : start + per_chunk]
            values = _run_chunk(model, graph, task, clean, deltas, layer, kind, chunk, fast)
            scores[[c[0] for c in chunk]] = torch.tensor(values, dtype=torch.float64)
            if bar is not None:
                bar.update(len(chunk))
    return scores


def batch_group_scores(model, graph: Graph, task: DiscoveryTask, clean: _CleanRun, ablated: Tensor,
                       pieces: _Pieces, groups, max_rows: int, bar: tqdm | None = None) -> Tensor:
    """The metric change of every edge into ``groups`` on one micro-batch (zeros elsewhere): the one path
    both the local run and a distributed unit (``_spread.exact_group_scores``) take."""
    fast = pieces.for_batch(model, clean, task)
    deltas = source_deltas(model, graph, clean.outputs, ablated)
    return groups_scores(model, graph, task, clean, deltas, fast, groups, max_rows, bar)


def _batch_scores(model, graph: Graph, task: DiscoveryTask, max_rows: int, nodes: bool, pieces: _Pieces,
                  bar: tqdm) -> dict:
    """One micro-batch: every edge's (and, with ``nodes``, every node's) metric change."""
    ablated = task.ablated(model, graph)
    clean = _clean_run(model, graph, task)
    out = {"edges": batch_group_scores(model, graph, task, clean, ablated, pieces, destination_groups(graph),
                                       max_rows, bar)}
    if nodes:
        out["nodes"] = node_patching_scores(model, graph, task, ablated, clean.value)
    return out


@register_method("exact", "exact activation patching of every edge (and node): the reference",
                 max_rows=512, nodes=True, progress=False, pieces=True, executor=None)
def exact(model, graph: Graph, task: DiscoveryTask, max_rows: int = 512, nodes: bool = True,
          progress: bool = False, pieces: bool = True, executor=None) -> EdgeScores:
    """``pieces``: compute only what an ablation changes in its destination layer (checked once per
    model against the bridge; off, or where the check fails, each destination block is rerun whole).
    ``max_rows``: prompts times edges run in one forward. ``executor`` (``"ray"``, a
    :class:`~mechwork.executors.Executor`): spread micro-batches x destination groups over its workers."""
    batches = micro_batches(model, graph, task)
    if executor is not None:
        from ._spread import spread_exact

        total = spread_exact(model, graph, batches, executor, max_rows=max_rows, nodes=nodes, pieces=pieces)
        return EdgeScores(graph, total["edges"].float(), "exact", node_scores=total.get("nodes"))
    bar = tqdm(total=graph.n_edges * len(batches), disable=not progress, desc="exact edge patching")
    use_pieces = _Pieces(pieces)
    total = accumulate(batches, lambda b: _batch_scores(model, graph, b, max_rows, nodes, use_pieces, bar))
    bar.close()
    return EdgeScores(graph, total["edges"].float(), "exact", node_scores=total.get("nodes"))
