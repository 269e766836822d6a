"""Exact edge patching without re-running the destination layer: a GPT-2 block computed piece by piece.

Ablating u -> (layer L, head h, port p) changes only head h's q, k or v input, so the layer's output
changes only by head h's result: ``resid_mid' = resid_mid + result_h' - result_h``. We compute that one
head (for a query edge, only its query; for key/value edges, only its keys or values) from the clean
layer's cached q/k/v, then run the MLP with the bridge's own modules and the blocks above as usual.
An MLP edge skips the layer's attention entirely. In the last layer, and in the last block of every
run, only the metric's query position is computed (nothing else reaches the answer).

The pieces follow Hugging Face's GPT-2 block (pre-LayerNorm attention and MLP, causal softmax scaled
by 1/sqrt(d_head)). They are used where the model's declared structure says they describe it
(``ModelStructure.layer_pieces``), and :func:`fast_exact_for` checks them on every call against the
clean run it is about to patch (a few rows; no cache): where they differ, it warns, naming the model
and the size of the difference, and exact patching reruns the bridge's blocks instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..hooks._runner import _standalone_from, _unembed, hook_flags, n_layers
from ..models import SlowPathWarning, structure_of, warn_slow_path


@dataclass(frozen=True)
class _Weights:
    W_Q: Tensor  # [layers, heads, d_model, d_head]
    b_Q: Tensor  # [layers, heads, d_head]
    W_K: Tensor
    b_K: Tensor
    W_V: Tensor
    b_V: Tensor
    W_O: Tensor  # [layers, heads, d_head, d_model]
    b_O: Tensor  # [layers, d_model]
    scales: tuple[float, ...]  # per layer: what attention scores are divided by

    @classmethod
    def of(cls, model) -> _Weights:
        hf = getattr(getattr(model, "original_model", None), "config", None)
        d_head = int(model.cfg.d_head)
        by_sqrt = getattr(hf, "scale_attn_weights", True)
        by_layer = getattr(hf, "scale_attn_by_inverse_layer_idx", False)
        scales = tuple((math.sqrt(d_head) if by_sqrt else 1.0) * ((layer + 1) if by_layer else 1)
                       for layer in range(n_layers(model)))
        with torch.no_grad():
            return cls(*(getattr(model, name).detach().clone() for name in
                         ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")), scales)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, query_positions: Tensor) -> Tensor:
    """Causal attention: q ``[..., Q, dh]`` at ``query_positions`` over k, v ``[..., T, dh]``."""
    scores = q @ k.transpose(-1, -2) / scale
    keys = torch.arange(k.shape[-2], device=k.device)
    scores = scores.masked_fill(keys[None, :] > query_positions[:, None], float("-inf"))
    return scores.softmax(-1) @ v


@dataclass
class _CleanLayer:
    q: Tensor  # [B, H, T, dh]
    k: Tensor
    v: Tensor
    result: Tensor  # per-head output [B, H, T, d] (without b_O)
    resid_mid: Tensor  # [B, T, d]


class FastExact:
    """Metric inputs for chunks of edge ablations into one destination group, layer pieces cached."""

    def __init__(self, model, resid_pre: list[Tensor], position: int):
        self.model, self.resid_pre = model, resid_pre
        self.w = _Weights.of(model)
        self.n_layers = n_layers(model)
        self.position = position % resid_pre[0].shape[1]
        self._layers: dict[int, _CleanLayer] = {}

    # ---- the clean layer, once per layer ---------------------------------------------------------
    def clean_layer(self, layer: int) -> _CleanLayer:
        if layer not in self._layers:
            x = self.resid_pre[layer]
            block, w = self.model.blocks[layer], self.w
            normed = block.ln1(x)
            q, k, v = self._qkv(layer, normed, normed)
            z = _attend(q, k, v, w.scales[layer], torch.arange(x.shape[1], device=x.device))
            result = torch.einsum("bhte,hed->bhtd", z, w.W_O[layer])
            self._layers[layer] = _CleanLayer(q, k, v, result, x + result.sum(1) + w.b_O[layer])
        return self._layers[layer]

    def _qkv(self, layer: int, for_queries: Tensor, for_keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every head's queries (from ``for_queries``), keys and values (from ``for_keys``):
        ``[batch, heads, positions, d_head]``."""
        w = self.w

        def project(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
            return torch.einsum("btd,hde->bhte", x, weight[layer]) + bias[layer][None, :, None]

        return project(for_queries, w.W_Q, w.b_Q), project(for_keys, w.W_K, w.b_K), project(for_keys, w.W_V, w.b_V)

    # ---- one chunk of edges ---------------------------------------------------------------------
    def head_edges(self, layer: int, ports: Tensor, heads: Tensor,
                   edits: Float[Tensor, "n batch pos d"]) -> Float[Tensor, "rows vocab"]:
        """Logits at the metric position with each row block's head input (q, k or v) reduced by its edit."""
        clean, w, block = self.clean_layer(layer), self.w, self.model.blocks[layer]
        n, batch, seq = edits.shape[:3]
        last = layer == self.n_layers - 1
        queries = torch.tensor([self.position], device=edits.device) if last else torch.arange(seq, device=edits.device)
        normed = block.ln1(self.resid_pre[layer].unsqueeze(0) - edits)  # [n, B, T, d]
        new_result = torch.empty(n, batch, len(queries), edits.shape[-1], dtype=edits.dtype, device=edits.device)
        for port in range(3):
            rows = (ports == port).nonzero().flatten()
            if len(rows) == 0:
                continue
            h = heads[rows]
            q, k, v = clean.q[:, h].transpose(0, 1), clean.k[:, h].transpose(0, 1), clean.v[:, h].transpose(0, 1)
            q = q[:, :, queries]  # [r, B, Q, dh]
            x = normed[rows]
            if port == 0:
                x = x[:, :, queries]
                q = torch.einsum("rbtd,rde->rbte", x, w.W_Q[layer, h]) + w.b_Q[layer, h][:, None, None]
            elif port == 1:
                k = torch.einsum("rbtd,rde->rbte", x, w.W_K[layer, h]) + w.b_K[layer, h][:, None, None]
            else:
                v = torch.einsum("rbtd,rde->rbte", x, w.W_V[layer, h]) + w.b_V[layer, h][:, None, None]
            z = _attend(q, k, v, w.scales[layer], queries)
            new_result[rows] = torch.einsum("rbte,red->rbtd", z, w.W_O[layer, h])
        old_result = clean.result[:, heads][:, :, queries].transpose(0, 1)  # [n, B, Q, d]
        mid = clean.resid_mid[:, queries].unsqueeze(0) + new_result - old_result
        return self._finish(layer, mid.flatten(0, 1))

    def mlp_edges(self, layer: int, edits: Float[Tensor, "n batch pos d"]) -> Float[Tensor, "rows vocab"]:
        """Logits at the metric position with each row block's MLP input reduced by its edit."""
        clean = self.clean_layer(layer)
        last = layer == self.n_layers - 1
        mid = clean.resid_mid.unsqueeze(0) - edits
        if last:
            mid = mid[:, :, [self.position]]
        block = self.model.blocks[layer]
        out = block.mlp(block.ln2(mid.flatten(0, 1)))
        residual = (clean.resid_mid[:, [self.position]] if last else clean.resid_mid).unsqueeze(0)
        post = residual.expand(len(edits), -1, -1, -1).flatten(0, 1) + out
        return self._rest(layer + 1, post)

    def _finish(self, layer: int, mid: Tensor) -> Tensor:
        block = self.model.blocks[layer]
        post = mid + block.mlp(block.ln2(mid))
        return self._rest(layer + 1, post)

    def _rest(self, layer: int, x: Tensor) -> Tensor:
        """From the residual entering ``layer`` (or already only at the metric position when ``layer``
        is past the end): the blocks above, the last one only at the metric position."""
        if layer >= self.n_layers:  # the destination was the last layer: x is already [rows, 1, d]
            return _unembed(self.model, x)[:, 0]
        with hook_flags(self.model, attn_result=False, split_qkv=False, mlp_in=False):
            if layer < self.n_layers - 1:
                x = _standalone_from(self.model, x, layer, stop=self.n_layers - 1)
            return _unembed(self.model, self._last_block_at_position(x))[:, 0]

    def _last_block_at_position(self, x: Tensor) -> Tensor:
        """The last block computed only for the metric's query position: ``[rows, 1, d]``."""
        layer, w, block = self.n_layers - 1, self.w, self.model.blocks[self.n_layers - 1]
        normed = block.ln1(x)
        p = self.position
        q, k, v = self._qkv(layer, normed[:, [p]], normed[:, : p + 1])
        z = _attend(q, k, v, w.scales[layer], torch.tensor([p], device=x.device))
        mid = x[:, [p]] + torch.einsum("bhte,hed->btd", z, w.W_O[layer]) + w.b_O[layer]
        return mid + block.mlp(block.ln2(mid))


@torch.no_grad()
def fast_exact_for(model, resid_pre: list[Tensor], position: int, *, check: bool = True) -> FastExact | None:
    """A :class:`FastExact` where the model's structure declares the GPT-2 layer pieces apply and they
    reproduce this clean run's logits; otherwise ``None`` (the caller reruns whole blocks), with a
    warning that says why. ``check=False``: the pieces already passed the check on another micro-batch
    of the same run."""
    structure = structure_of(model)
    if not structure.layer_pieces:
        warn_slow_path(model, "exact patching's layer pieces",
                       f"they follow GPT-2's block and {structure.architecture} is not declared to match it; "
                       "rerunning each destination block through the bridge (exact, slower)")
        return None
    fast = FastExact(model, resid_pre, position)
    if not check:
        return fast
    difference, tolerance = _difference_from_clean(model, fast, resid_pre)
    if difference > tolerance:
        warnings.warn(
            f"{getattr(model, 'mechwork_spec', structure.architecture)}: exact patching's layer pieces do not "
            f"reproduce this model's clean logits (max difference {difference:.3g} > {tolerance:.3g}); rerunning "
            "each destination block through the bridge instead (exact, slower)", SlowPathWarning, stacklevel=3)
        return None
    return fast


def _difference_from_clean(model, fast: FastExact, resid_pre: list[Tensor]) -> tuple[float, float]:
    """With nothing ablated every piece must give the clean logits the bridge's blocks give: the largest
    difference over the head and MLP pieces of the first and last layers, and the tolerance for it."""
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        reference = _unembed(model, _standalone_from(model, resid_pre[0], 0)[:, [fast.position]])[:, 0]
    # rounding differs between the pieces and the bridge's fused modules: allow a few of the dtype's steps
    relative = max(1e-4, 4 * torch.finfo(reference.dtype).eps)
    tolerance = relative * float(reference.abs().max()) + 1e-6
    zero = torch.zeros_like(resid_pre[0]).unsqueeze(0)
    ports = torch.tensor([0, 1, 2], device=zero.device)
    heads = torch.zeros(3, dtype=torch.long, device=zero.device)
    runs = [fast.head_edges(layer, ports, heads, zero.expand(3, -1, -1, -1)) for layer in (0, fast.n_layers - 1)]
    runs += [fast.mlp_edges(layer, zero) for layer in (0, fast.n_layers - 1)]
    worst = max(float((block - reference).abs().max()) for run in runs for block in run.split(len(reference)))
    return worst, tolerance
