"""Exact edge patching without re-running the destination layer: a GPT-2 block computed piece by piece.

Ablating u -> (layer L, head h, port p) changes only head h's q, k or v input, so the layer's output
changes only by head h's result: ``resid_mid' = resid_mid + result_h' - result_h``. We compute that one
head (for a query edge, only its query; for key/value edges, only its keys or values) from the clean
layer's cached q/k/v, then the layer's MLP and the blocks above. An MLP edge skips the layer's attention
entirely. In the last layer, and in the last block of every run, only the metric's query position is
computed (nothing else reaches the answer).

:class:`LayerPieces` computes every block from the model's own weights in fused form (one matmul for q, k
and v, PyTorch's fused attention and activation): about 1.5x faster than the bridge's modules, whose GELU
alone is six elementwise passes. ACDC's trials use the same pieces (``_acdc_fast.py``). Where the metric
reads only a few logits (a logit difference reads two per prompt), only those columns of the unembedding
are computed: a third of a block per row at GPT-2's vocabulary and 16 positions.

The pieces follow Hugging Face's GPT-2 block (pre-LayerNorm attention and MLP, causal softmax scaled
by 1/sqrt(d_head), the activation named by ``cfg.act_fn``). They are used where the model's declared
structure says they describe it (``ModelStructure.layer_pieces``), and :func:`fast_exact_for` checks them
on every call against the clean run it is about to patch (a few rows; no cache): where they differ, it
warns, naming the model and the size of the difference, and the caller uses the bridge's blocks instead.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..hooks._runner import _standalone_from, _unembed, hook_flags, n_layers
from ..metrics import LogitDiff, PositionMetric
from ..models import SlowPathWarning, structure_of, warn_slow_path

# the activations the fused MLP knows, by TransformerLens's ``cfg.act_fn``; another one: no pieces (said so)
_TANH_GELU = partial(F.gelu, approximate="tanh")
ACTIVATIONS = {"gelu_new": _TANH_GELU, "gelu_pytorch_tanh": _TANH_GELU, "gelu": F.gelu, "relu": F.relu}


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
    ln1: tuple[tuple[Tensor, Tensor, float], ...]  # per layer: LayerNorm weight, bias, epsilon
    ln2: tuple[tuple[Tensor, Tensor, float], ...]
    W_in: Tensor  # [layers, d_model, d_mlp]
    b_in: Tensor  # [layers, d_mlp]
    W_out: Tensor  # [layers, d_mlp, d_model]
    b_out: Tensor  # [layers, d_model]

    @classmethod
    def of(cls, model) -> _Weights:
        hf = getattr(getattr(model, "original_model", None), "config", None)
        d_head = int(model.cfg.d_head)
        by_sqrt = getattr(hf, "scale_attn_weights", True)
        by_layer = getattr(hf, "scale_attn_by_inverse_layer_idx", False)
        scales = tuple((math.sqrt(d_head) if by_sqrt else 1.0) * ((layer + 1) if by_layer else 1)
                       for layer in range(n_layers(model)))
        with torch.no_grad():
            tensors = [getattr(model, name).detach().clone() for name in
                       ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V", "W_O", "b_O")]
            norms = [tuple(_layer_norm_of(getattr(block, name)) for block in model.blocks) for name in ("ln1", "ln2")]
            mlp = [getattr(model, name).detach().clone() for name in ("W_in", "b_in", "W_out", "b_out")]
        return cls(*tensors, scales, *norms, *mlp)


def _layer_norm_of(module) -> tuple[Tensor, Tensor, float]:
    norm = getattr(module, "original_component", module)
    return norm.weight.detach(), norm.bias.detach(), float(norm.eps)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, query_positions: Tensor) -> Tensor:
    """Causal attention: q ``[..., Q, dh]`` at ``query_positions`` over k, v ``[..., T, dh]``."""
    scores = q @ k.transpose(-1, -2) / scale
    keys = torch.arange(k.shape[-2], device=k.device)
    scores = scores.masked_fill(keys[None, :] > query_positions[:, None], float("-inf"))
    return scores.softmax(-1) @ v


@dataclass(frozen=True)
class _FusedLayer:
    """One block's weights laid out for whole-block runs: q, k and v side by side, heads flattened."""

    W_qkv: Float[Tensor, "d_model three_heads_d_head"]
    b_qkv: Float[Tensor, " three_heads_d_head"]
    W_O: Float[Tensor, "heads_d_head d_model"]
    b_O: Float[Tensor, " d_model"]

    @classmethod
    def of(cls, w: _Weights, layer: int) -> _FusedLayer:
        def flat(weight: Tensor) -> Tensor:  # [heads, d_model, d_head] -> [d_model, heads * d_head]
            return weight[layer].permute(1, 0, 2).flatten(1)

        W_qkv = torch.cat([flat(w.W_Q), flat(w.W_K), flat(w.W_V)], dim=1).contiguous()
        b_qkv = torch.cat([w.b_Q[layer].flatten(), w.b_K[layer].flatten(), w.b_V[layer].flatten()])
        return cls(W_qkv, b_qkv, w.W_O[layer].flatten(0, 1).contiguous(), w.b_O[layer])


class LayerPieces:
    """GPT-2's blocks computed from the model's weights: whole fused blocks, the last block at one query
    position, an MLP alone, a LayerNorm; built once per model and run, shared by exact patching and ACDC."""

    def __init__(self, model):
        self.model = model
        self.w = _Weights.of(model)
        self.n_layers = n_layers(model)
        self.n_heads = int(self.w.W_Q.shape[1])
        self.fused = [_FusedLayer.of(self.w, layer) for layer in range(self.n_layers)]
        self.activation = ACTIVATIONS[model.cfg.act_fn]

    @staticmethod
    def norm(norm: tuple[Tensor, Tensor, float], x: Tensor) -> Tensor:
        weight, bias, eps = norm
        return F.layer_norm(x, weight.shape, weight, bias, eps)

    def mlp(self, layer: int, x: Float[Tensor, "*rows pos d"]) -> Float[Tensor, "*rows pos d"]:
        """The MLP's output (not yet added to the residual), ``ln2`` included."""
        w = self.w
        hidden = self.activation(torch.addmm(w.b_in[layer], self.norm(w.ln2[layer], x).flatten(0, -2), w.W_in[layer]))
        return torch.addmm(w.b_out[layer], hidden, w.W_out[layer]).view_as(x)

    def heads(self, qkv: Tensor, rows: int, positions: int, parts: int) -> tuple[Tensor, ...]:
        """``[rows * positions, parts * heads * d_head]`` -> ``parts`` tensors ``[rows, heads, positions, d_head]``."""
        return qkv.view(rows, positions, parts, self.n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def block(self, layer: int, x: Float[Tensor, "rows pos d"]) -> Float[Tensor, "rows pos d"]:
        fused, rows, seq = self.fused[layer], x.shape[0], x.shape[1]
        normed = self.norm(self.w.ln1[layer], x).flatten(0, 1)
        q, k, v = self.heads(torch.addmm(fused.b_qkv, normed, fused.W_qkv), rows, seq, 3)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.w.scales[layer])
        mid = x + torch.addmm(fused.b_O, z.transpose(1, 2).flatten(0, 1).flatten(1), fused.W_O).view_as(x)
        return mid + self.mlp(layer, mid)

    def last_block_at(self, x: Float[Tensor, "rows pos d"], p: int) -> Float[Tensor, "rows 1 d"]:
        """The last block computed only for query position ``p``: ``[rows, 1, d]``."""
        layer = self.n_layers - 1
        fused, rows, d = self.fused[layer], x.shape[0], x.shape[-1]
        normed = self.norm(self.w.ln1[layer], x[:, : p + 1])
        width = fused.W_O.shape[0]  # heads * d_head
        q = torch.addmm(fused.b_qkv[:width], normed[:, p], fused.W_qkv[:, :width])
        kv = torch.addmm(fused.b_qkv[width:], normed.flatten(0, 1), fused.W_qkv[:, width:])
        k, v = self.heads(kv, rows, p + 1, 2)
        (q,) = self.heads(q, rows, 1, 1)
        z = F.scaled_dot_product_attention(q, k, v, scale=1 / self.w.scales[layer])  # every key is at or before p
        mid = x[:, [p]] + torch.addmm(fused.b_O, z.flatten(1), fused.W_O).view(rows, 1, d)
        return mid + self.mlp(layer, mid)


@dataclass(frozen=True)
class _Readout:
    """The unembedding at the metric position: every column, or only those the metric reads (``columns``),
    with ``metric`` rewritten to index them."""

    metric: PositionMetric | None  # None: the caller scores every column with its own metric
    columns: Int[Tensor, " columns"] | None = None
    W_U: Tensor | None = None  # [d_model, columns]
    b_U: Tensor | None = None

    @classmethod
    def of(cls, model, metric: PositionMetric | None) -> _Readout:
        read = None if metric is None else _columns_read(metric)
        if read is None:
            return cls(metric)
        columns, narrowed = read
        columns = columns.to(model.W_U.device)
        return cls(narrowed, columns, model.W_U[:, columns].detach().contiguous(), model.b_U[columns].detach())

    def __call__(self, model, x: Float[Tensor, "rows 1 d_model"]) -> Float[Tensor, "rows vocab_or_columns"]:
        if self.columns is None:
            return _unembed(model, x)[:, 0]
        return torch.addmm(self.b_U, model.ln_final(x)[:, 0], self.W_U)


def _columns_read(metric: PositionMetric) -> tuple[Tensor, PositionMetric] | None:
    """The vocabulary columns ``metric`` reads and the same metric over those columns alone; ``None`` for a
    metric that reads them all (a softmax, KL) or that mechwork does not know to read only a few."""
    if type(metric) is not LogitDiff:  # a subclass may read more than its answers and wrong tokens
        return None
    n = len(metric.answers)
    columns, index = torch.unique(torch.cat([metric.answers, metric.wrong]).cpu(), return_inverse=True)
    return columns, dataclasses.replace(metric, answers=index[:n], wrong=index[n:])


@dataclass
class _CleanLayer:
    q: Tensor  # [B, H, T, dh]
    k: Tensor
    v: Tensor
    result: Tensor  # per-head output [B, H, T, d] (without b_O)
    resid_mid: Tensor  # [B, T, d]


class FastExact:
    """Metric inputs for chunks of edge ablations into one destination group, layer pieces cached.

    ``metric``: the task's metric; where it reads only a few logits, only those are computed and
    :attr:`metric` is the same metric over them: score the chunks' logits with it (``None``: score
    every column with the task's own)."""

    def __init__(self, model, resid_pre: list[Tensor], position: int, metric: PositionMetric | None = None,
                 pieces: LayerPieces | None = None):
        self.model, self.resid_pre = model, resid_pre
        self.pieces = pieces or LayerPieces(model)
        self.w = self.pieces.w
        self.n_layers = self.pieces.n_layers
        self.position = position % resid_pre[0].shape[1]
        self.readout = _Readout.of(model, metric)
        self.metric = self.readout.metric
        self._layers: dict[int, _CleanLayer] = {}

    # ---- the clean layer, once per layer ---------------------------------------------------------
    def clean_layer(self, layer: int) -> _CleanLayer:
        if layer not in self._layers:
            x = self.resid_pre[layer]
            w = self.w
            normed = self.pieces.norm(w.ln1[layer], x)
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
        clean, w = self.clean_layer(layer), self.w
        n, batch, seq = edits.shape[:3]
        last = layer == self.n_layers - 1
        queries = torch.tensor([self.position], device=edits.device) if last else torch.arange(seq, device=edits.device)
        normed = self.pieces.norm(w.ln1[layer], self.resid_pre[layer].unsqueeze(0) - edits)  # [n, B, T, d]
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
        mid = mid.flatten(0, 1)
        return self._rest(layer + 1, mid + self.pieces.mlp(layer, mid))

    def mlp_edges(self, layer: int, edits: Float[Tensor, "n batch pos d"]) -> Float[Tensor, "rows vocab"]:
        """Logits at the metric position with each row block's MLP input reduced by its edit."""
        clean = self.clean_layer(layer)
        last = layer == self.n_layers - 1
        mid = clean.resid_mid.unsqueeze(0) - edits
        if last:
            mid = mid[:, :, [self.position]]
        out = self.pieces.mlp(layer, mid.flatten(0, 1))
        residual = (clean.resid_mid[:, [self.position]] if last else clean.resid_mid).unsqueeze(0)
        post = residual.expand(len(edits), -1, -1, -1).flatten(0, 1) + out
        return self._rest(layer + 1, post)

    def _rest(self, layer: int, x: Tensor) -> Tensor:
        """From the residual entering ``layer`` (or already only at the metric position when ``layer``
        is past the end): the blocks above, the last one only at the metric position."""
        if layer >= self.n_layers:  # the destination was the last layer: x is already [rows, 1, d]
            return self.readout(self.model, x)
        for above in range(layer, self.n_layers - 1):
            x = self.pieces.block(above, x)
        return self.readout(self.model, self.pieces.last_block_at(x, self.position))


def why_no_layer_pieces(model) -> str | None:
    """Why the GPT-2 layer pieces cannot describe ``model`` (``None``: they can, subject to the check
    against its clean logits)."""
    structure = structure_of(model)
    if not structure.layer_pieces:
        return f"they follow GPT-2's block and {structure.architecture} is not declared to match it"
    if model.cfg.act_fn not in ACTIVATIONS:
        return f"its MLP activation {model.cfg.act_fn!r} is not one the pieces compute ({', '.join(ACTIVATIONS)})"
    return None


@torch.no_grad()
def fast_exact_for(model, resid_pre: list[Tensor], position: int, metric: PositionMetric | None = None, *,
                   check: bool = True, pieces: LayerPieces | None = None, user: str = "exact patching"
                   ) -> FastExact | None:
    """A :class:`FastExact` where the model's structure declares the GPT-2 layer pieces apply and they
    reproduce this clean run's logits; otherwise ``None`` (the caller reruns whole blocks), with a
    warning that says why. ``metric``: the task's (the logits it reads are the ones computed; ``None``:
    all of them). ``check=False``: the pieces already passed the check on another micro-batch of the
    same run. ``pieces``: the model's :class:`LayerPieces` when the caller keeps them between calls;
    ``user``: who uses them, for the warnings."""
    structure = structure_of(model)
    why = why_no_layer_pieces(model)
    if why is not None:
        warn_slow_path(model, f"{user}'s layer pieces",
                       f"{why}; rerunning each destination block through the bridge (exact, slower)")
        return None
    fast = FastExact(model, resid_pre, position, metric, pieces)
    if not check:
        return fast
    difference, tolerance = _difference_from_clean(model, fast, resid_pre)
    if difference > tolerance:
        warnings.warn(
            f"{getattr(model, 'mechwork_spec', structure.architecture)}: {user}'s layer pieces do not "
            f"reproduce this model's clean logits (max difference {difference:.3g} > {tolerance:.3g}); running "
            "the bridge's own blocks instead (exact, slower)", SlowPathWarning, stacklevel=3)
        return None
    return fast


def _difference_from_clean(model, fast: FastExact, resid_pre: list[Tensor]) -> tuple[float, float]:
    """With nothing ablated every piece must give the clean logits the bridge's blocks give (in the
    columns the pieces compute): the largest difference over the head and MLP pieces of the first and
    last layers (which run every block above them), and the tolerance for it."""
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        reference = _unembed(model, _standalone_from(model, resid_pre[0], 0)[:, [fast.position]])[:, 0]
    if fast.readout.columns is not None:
        reference = reference[:, fast.readout.columns]
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
