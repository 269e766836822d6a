"""ACDC's trials from the model's layer pieces: the current circuit with edges into one destination removed, run
from that destination's layer, several trials stacked along the batch.

ACDC tests edges from the logits down, so while it tests the edges into layer L nothing below L has been
ablated and every trial starts from the clean residual entering L. As in the patch-mask engine
(``graph/_engine.py``), a destination d receives its input minus ``sum_u w_ud (out_u - ablated_u)`` with
``w = 1 - mask``; here that sum is split at L:

* sources below L carry their clean outputs in every trial, so their part is computed once per destination
  and reused while d's weights stay the same (ACDC changes one destination's weights at a time), and once
  for all trials of a call where the trials agree on them;
* sources at or above L carry the trial's own outputs: each layer keeps, per trial, ``out_u - ablated_u``
  of the sources an ablated edge reads, and nothing for the others.

A head with no ablated input takes its q, k, v from one fused projection of the layer's normalised residual;
a head with one is normalised and projected from its own corrected input. The start layer's shared work
(its normalised residual and projections) is done once for all trials, and the last layer only at the
metric's query position. The blocks are :class:`~._layer_pieces.LayerPieces`, checked against the
bridge by :func:`~._exact_fast.fast_exact_for` before use; position-resolved graphs are not computed here
(the caller runs the engine and says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..graph import Graph
from ..hooks._validation import InputError
from ._exact_fast import FastExact


@dataclass(frozen=True)
class _Outputs:
    """``out_u - ablated_u`` of some sources in this run, per trial: ``[trials, batch, pos, k, d]``
    (``at_position``: computed at the metric position only, ``pos`` 1)."""

    sources: Int[Tensor, " k"]
    delta: Float[Tensor, "_trials batch pos k d"]
    at_position: bool


def _mix(weights: Float[Tensor, "trials k sources"], delta: Float[Tensor, "_trials batch pos sources d"]
         ) -> Float[Tensor, "trials batch pos k d"]:
    """``sum_u weights[m, k, u] * delta[m, ..., u, :]``. One delta shared by every trial is contracted in one
    matmul: a broadcast ``matmul`` would first copy it once per trial (gigabytes at GPT-2's size)."""
    if delta.shape[0] == 1 and weights.shape[0] > 1:
        return torch.einsum("mku,bpud->mbpkd", weights, delta[0])
    return torch.matmul(weights[:, None, None], delta)


class PieceTrials:
    """Logits of circuits that differ from one another only in the edges into one destination, from the
    model's layer pieces (``fast``), for one micro-batch: its clean node outputs and ablation values."""

    def __init__(self, fast: FastExact, graph: Graph, clean_outputs: Float[Tensor, "batch pos sources d"],
                 ablated: Float[Tensor, "_batch pos sources d"]):
        if graph.positions is not None:
            raise InputError("ACDC's layer pieces do not compute position-resolved graphs")
        self.fast, self.pieces, self.graph = fast, fast.pieces, graph
        self.ablated = ablated
        # the pieces' blocks normalise inside, so an ablated edge removes exactly out_u - ablated_u from d's input
        self.clean_delta = clean_outputs - ablated
        self.source_of_edge = graph.endpoint_tensor[:, 0].to(ablated.device)
        self._below: dict[tuple, tuple[Tensor, Tensor]] = {}  # group -> (weights, their clean correction)
        self._below_start: int | None = None

    @torch.no_grad()
    def logits(self, masks: Float[Tensor, "trials edges"], layer: int) -> Float[Tensor, "trials batch vocab"]:
        """The circuits' logits at the metric position (in the readout's columns), run from block ``layer``;
        every edge into a lower layer must be kept (ACDC's order guarantees it)."""
        graph, n_layers = self.graph, self.pieces.n_layers
        start = min(layer, n_layers - 1)  # logits edges: from the last block, like masked_forward_from
        masks = masks.to(self.clean_delta.device, self.clean_delta.dtype)
        if not bool(masks[:, graph.destination_layers.to(masks.device) < start].all()):
            raise InputError(f"ACDC trials from layer {start}: an edge into a lower layer is ablated")
        if start != self._below_start:  # clean corrections for another split point: the old ones are of no use
            self._below, self._below_start = {}, start
        weights = 1 - masks
        views = graph.split(weights)
        read = torch.zeros(graph.n_sources, dtype=torch.bool, device=masks.device)
        read[self.source_of_edge[(weights != 0).any(0)]] = True  # sources some trial's ablated edge reads
        trials = masks.shape[0]
        outputs: list[_Outputs] = []
        x = self.fast.resid_pre[start].unsqueeze(0)  # one copy for every trial until the first edit
        for block in range(start, n_layers):
            mid = self._attention(block, x, views.attn[block], outputs, read, start, trials)
            x = self._mlp(block, mid, views.mlp[block], outputs, read, start)
        final = x - self._correction(("logits",), views.logits[:, None], outputs, start, True)[..., 0, :]
        logits = self.fast.readout(self.fast.model, final.expand(trials, -1, -1, -1).flatten(0, 1))
        return logits.view(trials, -1, logits.shape[-1])

    # ---- corrections ------------------------------------------------------------------------------
    def _correction(self, group: tuple, weights: Float[Tensor, "trials k sources"], outputs: list[_Outputs],
                    start: int, at_position: bool) -> Float[Tensor, "_trials batch pos k d"]:
        """``sum_u w_u (out_u - ablated_u)`` for each of the ``k`` rows of ``weights`` (over the first
        ``sources`` sources): at every position, or at the metric position only."""
        first = self.graph.n_sources_attn(start)
        total = self._below_part(group, weights[..., :first], at_position)
        for out in outputs:
            if out.sources[0] >= weights.shape[-1]:
                break
            w = weights[..., out.sources]
            if not bool(w.any()):
                continue
            delta = out.delta if out.at_position or not at_position else out.delta[:, :, [self.fast.position]]
            part = _mix(w, delta)
            total = part if total is None else total + part
        if total is None:
            return self.clean_delta.new_zeros(1, 1, 1, weights.shape[1], 1)
        return total

    def _below_part(self, group: tuple, weights: Tensor, at_position: bool) -> Tensor | None:
        """The clean sources' part: once for all trials (``[1, batch, pos, k, d]``) where they agree on the
        weights, kept for the next call with the same weights; per trial where they do not."""
        if not bool(weights.any()):
            return None
        delta = self.clean_delta[:, :, : weights.shape[-1]]  # [B, P, first, d]
        if at_position:
            delta = delta[:, [self.fast.position]]
        if bool((weights == weights[:1]).all()):
            key = (group, at_position)
            kept = self._below.get(key)
            if kept is not None and torch.equal(kept[0], weights[0]):
                return kept[1]
            part = torch.matmul(weights[0], delta).unsqueeze(0)
            self._below[key] = (weights[0].clone(), part)
            return part
        return _mix(weights, delta.unsqueeze(0))  # only the trial destination's group

    def _record(self, outputs: list[_Outputs], sources: Tensor, out: Tensor, at_position: bool) -> None:
        positions = [self.fast.position] if at_position else slice(None)
        ablated = self.ablated[:, positions][:, :, sources]  # [B or 1, pos, k, d]
        outputs.append(_Outputs(sources, out - ablated, at_position))

    # ---- one block --------------------------------------------------------------------------------
    def _attention(self, layer: int, x: Float[Tensor, "_trials batch pos d"], ports, outputs: list[_Outputs],
                   read: Tensor, start: int, trials: int) -> Float[Tensor, "_trials batch query d"]:
        """The residual after the attention of block ``layer`` (at the metric position only in the last)."""
        pieces = self.pieces
        w = pieces.layers[layer]
        last = layer == pieces.n_layers - 1
        if last:
            x = x[:, :, : self.fast.position + 1]
        shared, batch, seq, d = x.shape
        qkv = torch.addmm(w.b_qkv, pieces.ln1(layer, x).flatten(0, 2), w.W_qkv).view(shared, batch, seq, -1)
        parts = list(pieces.split_qkv(qkv))  # [_trials, B, T, heads of the port, d_head]
        for port, (weight, bias) in enumerate(((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V))):
            heads = ports[port].any(-1).any(0).nonzero().flatten()  # the port's heads some trial corrects
            if len(heads) == 0:
                continue
            correction = self._correction(("attn", layer, port), ports[port][:, heads], outputs, start, False)
            own = pieces.ln1(layer, x.unsqueeze(3) - correction[:, :, :seq])  # [trials, B, T, k, d]
            if parts[port].shape[0] < trials:
                parts[port] = parts[port].expand(trials, -1, -1, -1, -1).clone()  # the trials part ways here
            parts[port][:, :, :, heads] = torch.einsum("mbtkd,kde->mbtke", own, weight[heads]) + bias[heads]
        n = max(part.shape[0] for part in parts)  # 1 while every trial computes the same
        q, k, v = (part.expand(n, -1, -1, -1, -1).flatten(0, 1).transpose(1, 2) for part in parts)
        positions = torch.arange(seq, device=x.device)
        if last:
            q, query_positions = q[:, :, [self.fast.position]], positions[[self.fast.position]]
        else:
            query_positions = positions
        q, k = pieces.rotate(q, query_positions), pieces.rotate(k, positions)
        z = pieces.attention(layer, q, k, v, causal=not last)  # [n * B, heads, queries, d_head]
        residual = x[:, :, -z.shape[2]:]  # the last layer: the metric position, the last of its positions
        first_head = self.graph.head_source(layer, 0)
        heads_read = read[first_head : first_head + pieces.n_heads].nonzero().flatten()
        if len(heads_read) == 0:
            return residual + pieces.write(layer, z).view(n, batch, z.shape[2], d)
        per_head = torch.einsum("rhte,hed->rthd", z, w.W_O).view(n, batch, z.shape[2], -1, d)
        self._record(outputs, first_head + heads_read, per_head[:, :, :, heads_read], last)
        return residual + per_head.sum(3) + w.b_O

    def _mlp(self, layer: int, mid: Float[Tensor, "_trials batch pos d"], weights: Float[Tensor, "trials sources"],
             outputs: list[_Outputs], read: Tensor, start: int) -> Float[Tensor, "_trials batch pos d"]:
        last = layer == self.pieces.n_layers - 1
        inputs = mid
        if bool(weights.any()):
            inputs = mid - self._correction(("mlp", layer), weights[:, None], outputs, start, last)[..., 0, :]
        out = self.pieces.mlp(layer, inputs)
        source = self.graph.mlp_source(layer)
        if bool(read[source]):
            self._record(outputs, torch.tensor([source], device=out.device), out.unsqueeze(3), last)
        return mid + out
