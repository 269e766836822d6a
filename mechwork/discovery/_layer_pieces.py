"""A model's blocks computed from its own weights, piece by piece: what exact patching and ACDC rerun.

Which pieces a block has is read from the model's structure (``models/_structure.py``), described once
there: a dense MLP (GPT-2) or a gated one (Llama: ``act(x W_gate) * (x W_in)``), absolute positions or
rotary ones (applied to queries and keys after the projection), one key/value head per query head or
grouped-query attention (query head ``h`` reads key/value head ``h // (heads / kv_heads)``, as
``Graph.kv_group`` numbers them). The norms are the model's own Hugging Face modules (LayerNorm, RMSNorm,
Gemma's ``1 + weight``), called without the bridge's hooks.

Everything else is fused for whole-block runs: one matmul for q, k and v, one for the MLP's gate and up
projections, PyTorch's fused attention, one activation call (GPT-2's tanh GELU in four in-place passes on
a CPU, :func:`tanh_gelu_`); about 1.5x faster than the bridge's modules on GPT-2. The per-head weights
stay available for the runs that change one head's input (``_exact_fast.py``, ``_acdc_fast.py``).

The pieces are used where the structure declares they describe a family
(``ModelStructure.layer_pieces``), and every use is checked against the bridge's clean logits first
(``_exact_fast.fast_exact_for``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..hooks._runner import n_layers
from ..models import MLPKind, PositionKind, structure_of
from ..models._edge_access import norm_module
from ..models._norm_parts import NormParts, norm_parts

_GELU_CUBIC, _GELU_LINEAR = 2 * math.sqrt(2 / math.pi) * 0.044715, 2 * math.sqrt(2 / math.pi)


def tanh_gelu_(x: Tensor) -> Tensor:
    """GPT-2's tanh GELU, ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``, which may
    overwrite ``x``. On a CPU in float32 it is computed as ``x sigmoid(2u)`` (the same function): PyTorch's
    CPU kernel for the tanh form is about 2x slower than these four passes, and the activation is 7% of
    exact patching's time on GPT-2. Elsewhere (a GPU's fused kernel, bf16's rounding, a tensor autograd
    tracks, which an in-place product would break) PyTorch's own."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return F.gelu(x, approximate="tanh")
    gate = torch.addcmul(x.new_tensor(_GELU_LINEAR), x, x, value=_GELU_CUBIC)  # 2u / x
    return x.mul_(gate.mul_(x).sigmoid_())


# the activations the fused MLP knows, by TransformerLens's ``cfg.act_fn``; another one: no pieces (said so).
# They may overwrite their input: the MLP's own temporary.
ACTIVATIONS = {"gelu_new": tanh_gelu_, "gelu_pytorch_tanh": tanh_gelu_, "gelu": F.gelu, "relu": F.relu,
               "silu": F.silu}


# Tokens per fused run on a CPU: small enough that a block's intermediates (the MLP's hidden layer above all)
# stay in cache between its matmuls and activation. Same-process sweeps at 2 CPU cores, whole blocks: GPT-2
# small's shape (16 tokens per row) ran fastest at 768-1024 tokens, 5-11% faster than at 1536 (the best before
# the in-place GELU); the Llama shape of benchmarks/ (32 per row) at 1024. A GPU runs whole tensors.
CHUNK_TOKENS = 1024


def row_chunks(n_rows: int, tokens_per_row: int, device: torch.device) -> list[slice]:
    """Slices of rows holding about ``CHUNK_TOKENS`` tokens each on a CPU; one slice on a GPU."""
    step = max(1, CHUNK_TOKENS // max(1, tokens_per_row))
    if device.type != "cpu" or n_rows <= step:
        return [slice(0, n_rows)]
    return [slice(first, first + step) for first in range(0, n_rows, step)]


def _in_chunks(run, x: Float[Tensor, "rows pos d"]) -> Float[Tensor, "rows pos d"]:
    """``run(x)`` (shape-preserving, row by row independent) over chunks of rows of ``CHUNK_TOKENS`` tokens."""
    chunks = row_chunks(x.shape[0], x.shape[1], x.device)
    if len(chunks) == 1:
        return run(x)
    out = torch.empty_like(x)
    for rows in chunks:
        out[rows] = run(x[rows])
    return out


def _bias(bias: Tensor | None, like: Tensor, shape: tuple[int, ...]) -> Tensor:
    return like.new_zeros(shape) if bias is None else bias.detach().clone()


def _parameter(module, name: str) -> Tensor | None:
    """A bridge weight that may be absent (bias-free projections): ``None`` rather than the bridge's error."""
    try:
        value = getattr(module, name)
    except AttributeError:
        return None
    return value


@dataclass(frozen=True)
class LayerWeights:
    """One block's weights: per head for the runs that change one head, fused for whole-block runs."""

    W_Q: Float[Tensor, "heads d_model d_head"]
    b_Q: Float[Tensor, "heads d_head"]
    W_K: Float[Tensor, "kv_heads d_model d_head"]
    b_K: Float[Tensor, "kv_heads d_head"]
    W_V: Float[Tensor, "kv_heads d_model d_head"]
    b_V: Float[Tensor, "kv_heads d_head"]
    W_O: Float[Tensor, "heads d_head d_model"]
    b_O: Float[Tensor, " d_model"]
    W_qkv: Float[Tensor, "d_model qkv"]  # queries, keys, values side by side, heads flattened
    b_qkv: Float[Tensor, " qkv"]
    W_O_flat: Float[Tensor, "heads_d_head d_model"]
    W_mlp_in: Float[Tensor, "d_model mlp_in"]  # dense: W_in; gated: W_gate then W_in
    b_mlp_in: Float[Tensor, " mlp_in"]
    W_out: Float[Tensor, "d_mlp d_model"]
    b_out: Float[Tensor, " d_model"]
    divisor: float  # what attention scores are divided by
    ln1: object  # the norm modules (Hugging Face's own)
    ln2: object

    @classmethod
    def of(cls, model, layer: int, gated: bool) -> LayerWeights:
        block, attn, mlp = model.blocks[layer], model.blocks[layer].attn, model.blocks[layer].mlp
        with torch.no_grad():
            W_Q, W_K, W_V, W_O = (getattr(attn, name).detach().clone() for name in ("W_Q", "W_K", "W_V", "W_O"))
            heads, kv_heads, d_head, d_model = W_Q.shape[0], W_K.shape[0], W_Q.shape[2], W_Q.shape[1]
            b_Q = _bias(_parameter(attn, "b_Q"), W_Q, (heads, d_head))
            b_K = _bias(_parameter(attn, "b_K"), W_K, (kv_heads, d_head))
            b_V = _bias(_parameter(attn, "b_V"), W_V, (kv_heads, d_head))
            b_O = _bias(_parameter(attn, "b_O"), W_O, (d_model,))
            W_in, W_out = mlp.W_in.detach(), mlp.W_out.detach()
            d_mlp = W_in.shape[1]
            b_in = _bias(_parameter(mlp, "b_in"), W_in, (d_mlp,))
            if gated:
                W_gate = mlp.W_gate.detach()
                W_in = torch.cat([W_gate, W_in], dim=1)
                b_in = torch.cat([_bias(_parameter(mlp, "b_gate"), W_gate, (d_mlp,)), b_in])

            def flat(weight: Tensor) -> Tensor:  # [heads, d_model, d_head] -> [d_model, heads * d_head]
                return weight.permute(1, 0, 2).flatten(1)

            return cls(W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O,
                       torch.cat([flat(W_Q), flat(W_K), flat(W_V)], dim=1).contiguous(),
                       torch.cat([b_Q.flatten(), b_K.flatten(), b_V.flatten()]),
                       W_O.flatten(0, 1).contiguous(), W_in.contiguous(), b_in,
                       W_out.contiguous(), _bias(_parameter(mlp, "b_out"), W_out, (W_out.shape[1],)),
                       _divisor(model, layer, d_head), norm_module(block, "ln1"), norm_module(block, "ln2"))


def _divisor(model, layer: int, d_head: int) -> float:
    """What the model divides attention scores by: its attention module's own ``scaling`` where it has one
    (Llama and its kin), else GPT-2's rule (``scale_attn_weights``, ``scale_attn_by_inverse_layer_idx``)."""
    hf_attn = getattr(model.blocks[layer].attn, "original_component", None)
    scaling = getattr(hf_attn, "scaling", None)
    if scaling is not None:
        return 1.0 / float(scaling)
    hf = getattr(getattr(model, "original_model", None), "config", None)
    by_sqrt = getattr(hf, "scale_attn_weights", True)
    by_layer = getattr(hf, "scale_attn_by_inverse_layer_idx", False)
    return (math.sqrt(d_head) if by_sqrt else 1.0) * ((layer + 1) if by_layer else 1)


class Rotary:
    """Rotary positions as the model's own rotary module computes them (cos, sin per position), applied
    Llama's way: ``x cos + rotate_half(x) sin`` over the whole head dimension."""

    def __init__(self, model):
        self.module = getattr(model.rotary_emb, "original_component", model.rotary_emb)
        self._tables: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(self, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (length, like.dtype, like.device)
        if key not in self._tables:
            positions = torch.arange(length, device=like.device)[None]
            with torch.no_grad():
                cos, sin = self.module(like.new_zeros(1, length, 1), positions)
            self._tables[key] = (cos[0].to(like.dtype), sin[0].to(like.dtype))
        return self._tables[key]

    def __call__(self, x: Float[Tensor, "*rows pos d_head"], positions: Tensor) -> Float[Tensor, "*rows pos d_head"]:
        cos, sin = self.tables(int(positions.max()) + 1, x)
        cos, sin = cos[positions], sin[positions]
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def attend(q: Float[Tensor, "*#rows queries d_head"], k: Float[Tensor, "*#rows keys d_head"], v: Tensor,
           divisor: float, query_positions: Tensor) -> Float[Tensor, "*#rows queries d_head"]:
    """Causal attention of queries at ``query_positions`` over keys and values at positions 0.."""
    scores = q @ k.transpose(-1, -2) / divisor
    keys = torch.arange(k.shape[-2], device=k.device)
    scores = scores.masked_fill(keys[None, :] > query_positions[:, None], float("-inf"))
    return scores.softmax(-1) @ v


class LayerPieces:
    """A model's blocks from its weights: whole fused blocks, the last block at one query position, an
    MLP alone, the norms, the projections of chosen heads; built once per model, shared by exact patching
    and ACDC."""

    def __init__(self, model):
        structure = structure_of(model)
        self.model = model
        self.n_layers = n_layers(model)
        self.gated = structure.mlp is MLPKind.GATED
        self.rotary = Rotary(model) if structure.positions is PositionKind.ROTARY else None
        self.layers = [LayerWeights.of(model, layer, self.gated) for layer in range(self.n_layers)]
        self.n_heads, self.n_kv_heads = self.layers[0].W_Q.shape[0], self.layers[0].W_K.shape[0]
        self.group = self.n_heads // self.n_kv_heads  # query heads per key/value head
        self.d_head = self.layers[0].W_Q.shape[2]
        self.activation = ACTIVATIONS[model.cfg.act_fn]
        self.norm = structure.norm
        self._ln2_parts: dict[int, NormParts | str] = {}

    # ---- pieces ---------------------------------------------------------------------------------
    def ln1(self, layer: int, x: Tensor) -> Tensor:
        return self.layers[layer].ln1(x)

    def rotate(self, x: Float[Tensor, "*rows pos d_head"], positions: Tensor) -> Tensor:
        """Queries or keys at ``positions`` with the model's positions applied (none for absolute ones)."""
        return x if self.rotary is None else self.rotary(x, positions)

    def project(self, layer: int, port: int, heads: Tensor, x: Float[Tensor, "rows *batch pos d_model"]
                ) -> Float[Tensor, "rows *batch pos d_head"]:
        """Row ``r``'s projection for head ``heads[r]`` of ``port`` (0 q, 1 k, 2 v; k/v heads are key/value
        heads) from its own normalised input ``x[r]``, before positions are applied."""
        w = self.layers[layer]
        weight, bias = ((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V))[port]
        out = torch.einsum("r...d,rde->r...e", x, weight[heads])
        return out + bias[heads].view(len(heads), *([1] * (x.dim() - 2)), -1)

    def split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[..., qkv]`` from the fused projection -> queries ``[..., heads, d_head]``, keys and values
        ``[..., kv_heads, d_head]``."""
        sizes = (self.n_heads * self.d_head, self.n_kv_heads * self.d_head, self.n_kv_heads * self.d_head)
        return tuple(part.unflatten(-1, (-1, self.d_head)) for part in qkv.split(sizes, dim=-1))

    def mlp(self, layer: int, x: Float[Tensor, "*rows pos d"]) -> Float[Tensor, "*rows pos d"]:
        """The MLP's output (not yet added to the residual), its norm included."""
        tokens = x.reshape(-1, 1, x.shape[-1])  # every token on its own: chunks of tokens, any leading shape
        return _in_chunks(partial(self._mlp, layer), tokens).view_as(x)

    def _mlp(self, layer: int, x: Float[Tensor, "*rows pos d"]) -> Float[Tensor, "*rows pos d"]:
        w = self.layers[layer]
        return self.mlp_out(layer, torch.addmm(w.b_mlp_in, w.ln2(x).flatten(0, -2), w.W_mlp_in)).view_as(x)

    def mlp_out(self, layer: int, hidden: Float[Tensor, "*lead mlp_in"]) -> Float[Tensor, "tokens d"]:
        """The MLP's output from its input projection (gate and up side by side for a gated MLP), every
        leading dimension flattened into tokens. Consumes ``hidden``: the activation may write into it."""
        w, hidden = self.layers[layer], hidden.flatten(0, -2)
        if self.gated:
            half = hidden.shape[-1] // 2  # slices, not chunk(): the activation may write into the gate half
            hidden = self.activation(hidden[:, :half]) * hidden[:, half:]
        else:
            hidden = self.activation(hidden)
        return torch.addmm(w.b_out, hidden, w.W_out)

    def ln2_parts(self, layer: int) -> NormParts | str:
        """The MLP's norm as :class:`~mechwork.models._norm_parts.NormParts`, or why it cannot be read so."""
        if layer not in self._ln2_parts:
            w = self.layers[layer]
            self._ln2_parts[layer] = norm_parts(w.ln2, self.norm, w.W_mlp_in.shape[0], w.W_mlp_in)
        return self._ln2_parts[layer]

    def attention(self, layer: int, q: Float[Tensor, "rows heads queries d_head"],
                  k: Float[Tensor, "rows kv_heads keys d_head"], v: Tensor, causal: bool) -> Tensor:
        """PyTorch's fused attention (key/value heads shared by their query heads)."""
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1 / self.layers[layer].divisor,
                                              enable_gqa=self.group > 1)

    def write(self, layer: int, z: Float[Tensor, "rows heads pos d_head"]) -> Float[Tensor, "rows pos d_model"]:
        """Every head's output summed through ``W_O``, the bias included."""
        w = self.layers[layer]
        out = torch.addmm(w.b_O, z.transpose(1, 2).flatten(0, 1).flatten(1), w.W_O_flat)
        return out.view(z.shape[0], z.shape[2], -1)

    # ---- whole blocks ---------------------------------------------------------------------------
    def qkv(self, layer: int, x: Float[Tensor, "rows pos d"], positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every head's queries, keys and values ``[rows, heads, pos, d_head]`` with positions applied."""
        w = self.layers[layer]
        qkv = torch.addmm(w.b_qkv, self.ln1(layer, x).flatten(0, 1), w.W_qkv).view(*x.shape[:2], -1)
        q, k, v = (part.transpose(1, 2) for part in self.split_qkv(qkv))
        return self.rotate(q, positions), self.rotate(k, positions), v

    def block(self, layer: int, x: Float[Tensor, "rows pos d"]) -> Float[Tensor, "rows pos d"]:
        return _in_chunks(partial(self._block, layer), x)

    def _block(self, layer: int, x: Float[Tensor, "rows pos d"]) -> Float[Tensor, "rows pos d"]:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self.qkv(layer, x, positions)
        mid = x + self.write(layer, self.attention(layer, q, k, v, causal=True))
        return mid + self._mlp(layer, mid)

    def last_block_at(self, x: Float[Tensor, "rows pos d"], p: int) -> Float[Tensor, "rows 1 d"]:
        """The last block computed only for query position ``p``: ``[rows, 1, d]``."""
        layer = self.n_layers - 1
        w, rows = self.layers[layer], x.shape[0]
        normed = self.ln1(layer, x[:, : p + 1])
        width = self.n_heads * self.d_head  # the queries' columns of the fused projection
        q = torch.addmm(w.b_qkv[:width], normed[:, p], w.W_qkv[:, :width]).view(rows, self.n_heads, 1, -1)
        kv = torch.addmm(w.b_qkv[width:], normed.flatten(0, 1), w.W_qkv[:, width:]).view(rows, p + 1, 2, -1)
        k, v = (part.unflatten(-1, (-1, self.d_head)).transpose(1, 2) for part in kv.unbind(2))
        q = self.rotate(q, torch.tensor([p], device=x.device))
        k = self.rotate(k, torch.arange(p + 1, device=x.device))
        z = self.attention(layer, q, k, v, causal=False)  # every key is at or before p
        mid = x[:, [p]] + self.write(layer, z)
        return mid + self.mlp(layer, mid)
