"""The patch-mask engine: run a model with every edge weighted by a mask, in one forward pass.

A destination's input is ``x_d = sum_u out_u + const``. With mask ``m`` on its incoming edges it
receives ``x_d - sum_u (1 - m_ud) * (out_u - ablated_u)``: a kept edge (``m = 1``) passes the
source's output from this very run, an ablated one (``m = 0``) passes the ablation value (the
corrupted run's output, a mean, or zero). Outputs of upstream nodes are read as the forward runs, so
a node whose own inputs were masked passes its changed output on. The correction is applied to each
destination's own pre-norm input (a head's q/k/v copy, per key/value head under grouped-query
attention, the MLP's input, and the last ``hook_resid_post`` for the logits) through the access points
of ``hooks/_edge_points.py`` (the bridge's edge hooks, or mechwork's computed ones where the bridge has
none), so it is exact for every block structure the graph accepts (``ModelStructure.require_edge_graph``).

Masks may be fractional and require grad; gradients with respect to the mask are edge attributions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .._batching import model_device, model_dtype, over_rows, split_rows, weighted_sum
from ..hooks._edge_points import edge_flags, head_input_hooks, head_output_hooks, mlp_input_hooks
from ..hooks._head_writes import HeadWrites, head_writes_of
from ..hooks._runner import embed, run_from
from ..hooks._validation import InputError
from ._graph import PORTS, Graph, MaskViews

AblationValues = Float[Tensor, "_batch pos sources d_model"]  # batch 1 for mean/zero


def output_hooks(model, graph: Graph, record: Callable[[int, Tensor], None]) -> list:
    """Hooks that hand every head's and MLP's output (with its first source index) to ``record``."""
    hooks = []
    for layer in range(graph.n_layers):
        first_head = graph.head_source(layer, 0)
        hooks += head_output_hooks(model, layer, lambda a, i=first_head: record(i, a))
        mlp = graph.mlp_source(layer)
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook, i=mlp: record(i, a.unsqueeze(2))))
    return hooks


def recording_outputs(model, graph: Graph, resid: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, list]:
    """A ``[batch, pos, sources, d_model]`` buffer holding the input node's output (``resid``), and
    hooks that fill in every head's and MLP's output (detached) as a forward runs (under
    ``edge_flags(model, outputs=True, ...)``)."""
    out = resid.new_zeros(*resid.shape[:2], graph.n_sources, resid.shape[-1])
    out[:, :, 0] = resid.detach()

    def record(i: int, value: Tensor) -> None:
        out[:, :, i : i + value.shape[2]] = value.detach()

    return out, output_hooks(model, graph, record)


@torch.no_grad()
def node_outputs(model, graph: Graph, tokens: Int[Tensor, "batch pos"]) -> AblationValues:
    """Every source node's output on ``tokens``: ``[batch, pos, sources, d_model]``."""
    resid = embed(model, tokens)
    out, hooks = recording_outputs(model, graph, resid)
    with edge_flags(model, outputs=True, inputs=False):
        run_from(model, resid, 0, position=-1, fwd_hooks=hooks)
    return out


def mean_node_outputs(model, graph: Graph, tokens: Int[Tensor, "ref pos"],
                      batch_size: int | None = None) -> Float[Tensor, "1 pos sources d_model"]:
    """Every source's output averaged over ``tokens`` (per position), computed ``batch_size`` prompts at a
    time: summed in float32 and divided once at the end, then stored in the model's dtype."""
    total = weighted_sum(over_rows(split_rows(tokens.shape[0], batch_size),
                                   lambda r: node_outputs(model, graph, tokens[r.index]).mean(0, keepdim=True)))
    return total.to(model_dtype(model))


def ablation_values(
    model,
    graph: Graph,
    kind: str,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "_ref pos"] | None = None,
    *,
    batch_size: int | None = None,
) -> AblationValues:
    """What an ablated edge carries: ``"corrupted"`` (the corrupted run, row by row), ``"mean"`` (the
    mean over ``corrupted`` used as a reference set, per position, by micro-batches of ``batch_size``)
    or ``"zero"``. On the model's device, in its dtype."""
    if kind == "zero":
        d_model = int(model.cfg.d_model)
        return torch.zeros(1, clean.shape[1], graph.n_sources, d_model, device=model_device(model),
                           dtype=model_dtype(model))
    if corrupted is None:
        raise InputError(f"{kind!r} ablation needs corrupted/reference prompts")
    if corrupted.shape[1] != clean.shape[1]:
        raise InputError(f"clean prompts have {clean.shape[1]} positions, reference prompts {corrupted.shape[1]}")
    if kind == "corrupted":
        if corrupted.shape != clean.shape:
            raise InputError(
                f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} must have the same shape"
            )
        return node_outputs(model, graph, corrupted)
    if kind == "mean":
        return mean_node_outputs(model, graph, corrupted, batch_size)
    raise InputError(f"unknown ablation {kind!r}: use 'corrupted', 'mean' or 'zero'")


def source_deltas(model, graph: Graph, outputs: Float[Tensor, "batch pos sources d_model"],
                  ablated: AblationValues) -> Float[Tensor, "batch pos sources d_model"]:
    """What ablating one edge out of each source, alone, subtracts from its destination's input.

    ``out_u - ablated_u`` where heads add to the residual stream. Where a layer normalises its heads'
    summed output ``S`` (``hooks/_head_writes.py``), a head's is ``norm(S) - norm(S - delta_h)`` at the
    sum of ``outputs`` (exact patching; the gradient methods take its first order, layer by layer, with
    :func:`normed_head_deltas`).
    """
    deltas = outputs - ablated
    writes = head_writes_of(model)
    for layer in writes.normed_layers():
        heads = slice(graph.head_source(layer, 0), graph.head_source(layer, 0) + graph.n_heads)
        deltas[:, :, heads] = normed_head_deltas(writes, layer, outputs[:, :, heads], deltas[:, :, heads],
                                                 linear=False)
    return deltas


def normed_head_deltas(writes: HeadWrites, layer: int, results: Float[Tensor, "batch pos heads d_model"],
                       deltas: Float[Tensor, "batch pos heads d_model"], *,
                       linear: bool) -> Float[Tensor, "batch pos heads d_model"]:
    """:func:`source_deltas` for the heads of one layer that normalises their summed output: ``results``
    are their outputs, ``deltas`` their ``out - ablated``; with ``linear``, the first order
    ``J_norm(S) delta_h`` (the mask gradient EAP and EAP-IG take)."""
    summed = writes.summed(layer, results).unsqueeze(2)
    return -(writes.linear_change if linear else writes.change)(layer, summed, deltas)


@dataclass
class _Deltas:
    """``out_u - ablated_u`` of every source seen so far in this run, and the masked sums of them.

    Without grad the deltas go into one preallocated buffer. With grad they are kept as chunks,
    since writing into a shared buffer would invalidate the tensors autograd saved for the mask.
    Heads whose layer normalises their summed output (``hooks/_head_writes.py``) reach a destination
    through that norm: their part of a destination's correction is ``norm(S) - norm(S - mix)`` per layer,
    with ``S`` this run's sum, not the plain mix.
    """

    ablated: AblationValues
    positional: bool
    buffer: Tensor | None = None
    chunks: list | None = None
    writes: HeadWrites | None = None  # set when some layer normalises its heads' summed output
    normed: tuple[tuple[int, int, int], ...] = ()  # (first source, heads, layer) of each such layer
    _sums: dict | None = None

    @classmethod
    def for_run(cls, model, graph: Graph, resid: Tensor, ablated: AblationValues, grad: bool) -> _Deltas:
        deltas = cls(ablated.to(resid.device, resid.dtype), graph.positions is not None)
        if grad:
            deltas.chunks = []
        else:
            deltas.buffer = resid.new_zeros(*resid.shape[:2], graph.n_sources, resid.shape[-1])
        writes = head_writes_of(model)
        if not writes.additive:
            deltas.writes, deltas._sums = writes, {}
            deltas.normed = tuple((graph.head_source(layer, 0), graph.n_heads, layer)
                                  for layer in writes.normed_layers())
        return deltas

    def add(self, index: int, value: Float[Tensor, "batch pos k d_model"]) -> None:
        delta = value - self.ablated[:, :, index : index + value.shape[2]]
        if self.buffer is not None:
            self.buffer[:, :, index : index + value.shape[2]] = delta
        else:
            self.chunks.append((index, delta))

    def mix(self, weights: Tensor, n_sources: int, heads: bool) -> Tensor:
        """The correction to a destination's input: ``sum_u weights[..., u] * delta_u`` over the first
        ``n_sources`` sources, with normed heads' part taken through their layer's norm.

        ``weights``: ``[(pos,) heads, sources]`` for a head group (result ``[batch, pos, heads, d]``) or
        ``[(pos,) sources]`` for one destination (result ``[batch, pos, d]``). A broadcast matmul over
        (batch, pos) is several times faster here than the equivalent einsum on CPU.
        """
        w = weights if heads or not self.positional else weights.unsqueeze(-2)  # [pos, 1, sources]
        groups = [g for g in self.normed if g[0] + g[1] <= n_sources]
        if groups:
            w = w.clone()
            parts = [self._through_norm(w[..., first : first + n].clone(), first, n, layer, heads)
                     for first, n, layer in groups]
            for first, n, _ in groups:
                w[..., first : first + n] = 0
        total = self._plain(w, n_sources, heads)
        return total + sum(parts) if groups else total

    def _plain(self, w: Tensor, n_sources: int, heads: bool) -> Tensor:
        if self.buffer is not None:
            return _squeeze(torch.matmul(w, self.buffer[:, :, :n_sources]), heads, self.positional)
        total = None
        for index, delta in self.chunks:
            if index >= n_sources:
                break
            part = torch.matmul(w[..., index : index + delta.shape[2]], delta)
            total = part if total is None else total + part
        return _squeeze(total, heads, self.positional)

    def _of(self, first: int, n: int) -> Tensor:
        if self.buffer is not None:
            return self.buffer[:, :, first : first + n]
        return next(delta for index, delta in self.chunks if index == first)

    def _through_norm(self, w: Tensor, first: int, n: int, layer: int, heads: bool) -> Tensor:
        """``norm(S) - norm(S - mix)`` for one normed layer: what the destination's input loses."""
        delta = self._of(first, n)
        summed = self._sums.get(first)
        if summed is None:  # this run's sum S = sum_h (delta_h + ablated_h) + b_O, once per run
            summed = self._sums[first] = self.writes.summed(layer, delta + self.ablated[:, :, first : first + n])
        removed = _squeeze(torch.matmul(w, delta), heads, self.positional)
        return -self.writes.change(layer, summed.unsqueeze(2) if heads else summed, removed)


def _squeeze(out: Tensor, heads: bool, positional: bool) -> Tensor:
    return out.squeeze(-2) if positional and not heads else out


def _input_hooks(model, graph: Graph, views: MaskViews, deltas: _Deltas, skip_kept: bool) -> list:
    hooks = []

    def correct(weights: Tensor, n_src: int, heads: bool):
        def edit(act: Tensor) -> Tensor | None:
            if skip_kept and not bool(weights.any()):
                return None
            return act - deltas.mix(weights, n_src, heads).to(act.dtype)

        return edit

    for layer in range(graph.n_layers):
        for p, port in enumerate(PORTS):
            weights = 1 - views.attn[layer][p]  # [(pos,) heads of the port, sources]
            hooks += head_input_hooks(model, layer, port, correct(weights, graph.n_sources_attn(layer), True))
        hooks += mlp_input_hooks(model, layer, correct(1 - views.mlp[layer], graph.n_sources_mlp(layer), False))
    last = f"blocks.{graph.n_layers - 1}.hook_resid_post"
    fix_logits = correct(1 - views.logits, graph.n_sources, False)
    hooks.append((last, lambda act, hook: fix_logits(act)))
    return hooks


def masked_forward(
    model,
    graph: Graph,
    resid: Float[Tensor, "batch pos d_model"],
    mask: Float[Tensor, " edges"],
    ablated: AblationValues,
    *,
    position: int | None = None,
) -> Tensor:
    """Logits of a run from ``resid`` (the embeddings) with every edge weighted by ``mask``.

    ``position`` set: ``[batch, vocab]`` logits there only (the unembedding is skipped elsewhere).
    Differentiable with respect to ``mask`` (and ``resid``) when they require grad.
    """
    if resid.shape[1] != ablated.shape[1]:
        raise InputError(f"prompts have {resid.shape[1]} positions, the ablation values {ablated.shape[1]}")
    if graph.positions is not None and graph.positions != resid.shape[1]:
        raise InputError(f"the graph is resolved over {graph.positions} positions, the prompts have {resid.shape[1]}")
    mask = mask.to(resid.device, resid.dtype)
    grad = torch.is_grad_enabled() and (mask.requires_grad or resid.requires_grad)
    deltas = _Deltas.for_run(model, graph, resid, ablated, grad)
    deltas.add(0, resid.unsqueeze(2))
    hooks = output_hooks(model, graph, deltas.add) + _input_hooks(model, graph, graph.split(mask), deltas,
                                                                   skip_kept=not grad)
    with edge_flags(model, outputs=True, inputs=True):
        return run_from(model, resid, 0, position=position, fwd_hooks=hooks)


@dataclass(frozen=True)
class CleanStart:
    """The clean run, kept so circuit runs can start at a layer instead of the embeddings."""

    resid_pre: list[Tensor]  # the residual entering each layer, then the final one: [batch, pos, d_model]
    outputs: Tensor  # every source's clean output, [batch, pos, sources, d_model]
    logits: Tensor  # at the position the run was made for, [batch, vocab]


@torch.no_grad()
def clean_start(model, graph: Graph, resid: Float[Tensor, "batch pos d_model"], position: int = -1) -> CleanStart:
    """One clean forward from ``resid`` recording the residual entering every layer (and leaving the
    last), every source's output, and the logits at ``position``."""
    outputs, hooks = recording_outputs(model, graph, resid)
    pre: dict[int, Tensor] = {}
    hooks += [(f"blocks.{layer}.hook_resid_pre", lambda a, hook, i=layer: pre.__setitem__(i, a.clone()))
              for layer in range(graph.n_layers)]
    last = graph.n_layers - 1
    hooks.append((f"blocks.{last}.hook_resid_post", lambda a, hook: pre.__setitem__(last + 1, a.clone())))
    with edge_flags(model, outputs=True, inputs=False):
        logits = run_from(model, resid, 0, position=position, fwd_hooks=hooks)
    return CleanStart([pre[i] for i in range(graph.n_layers + 1)], outputs, logits)


@torch.no_grad()
def masked_forward_from(
    model,
    graph: Graph,
    clean: CleanStart,
    layer: int,
    mask: Float[Tensor, " edges"],
    ablated: AblationValues,
    *,
    position: int | None = None,
) -> Tensor:
    """:func:`masked_forward` starting at block ``layer`` from the clean residual.

    Exact when every edge into a node below ``layer`` is kept: those nodes then compute exactly what
    they computed in the clean run, so the residual entering ``layer`` and their outputs are the clean
    ones (checked; ACDC, which prunes from the logits down, always satisfies it).
    """
    below = graph.destination_layers < layer
    if not bool(mask[below].all()):
        raise InputError(f"masked_forward_from layer {layer}: an edge into a lower layer is ablated; start lower")
    resid = clean.resid_pre[layer]
    mask = mask.to(resid.device, resid.dtype)
    deltas = _Deltas.for_run(model, graph, resid, ablated, grad=False)
    first = graph.n_sources_attn(layer)
    deltas.add(0, clean.outputs[:, :, :first])  # sources below the layer carry their clean outputs
    hooks = output_hooks(model, graph, deltas.add) + _input_hooks(model, graph, graph.split(mask), deltas,
                                                                   skip_kept=True)
    with edge_flags(model, outputs=True, inputs=True):
        return run_from(model, resid, layer, position=position, fwd_hooks=hooks)


def run_circuit(
    model,
    graph: Graph,
    tokens: Int[Tensor, "batch pos"],
    mask: Float[Tensor, " edges"],
    ablated: AblationValues,
    *,
    position: int | None = None,
) -> Tensor:
    """:func:`masked_forward` from tokens."""
    with torch.no_grad():
        resid = embed(model, tokens)
    return masked_forward(model, graph, resid, mask, ablated, position=position)
