"""A layer's MLP after a few of its heads' outputs changed, without the MLP's full input product.

When only heads ``A`` of layer L change, by ``dz_a`` (their attention outputs, before ``W_O``), the MLP
reads ``mid' = mid + change`` with ``change = sum_a dz_a W_O^a``: a change of rank at most ``|A| d_head``,
a twelfth of ``d_model`` for one GPT-2 head. With the norm as its parts (``models/_norm_parts.py``:
``norm(x) = weight * centre(x) * scale(x) + bias``) and ``W' = diag(weight) W_in``:

    norm(mid') W_in + b_in = scale(mid') * (centre(mid) W' + sum_a dz_a centre(W_O^a) W') + bias W_in + b_in

(``centre`` row by row: a LayerNorm's mean subtraction is linear, so the change's mean comes out of each
row of ``W_O``; an RMSNorm does not centre). ``centre(mid) W'`` is computed once per layer from the clean
run, ``centre(W_O^a) W'`` once per head, so each row pays ``|A| d_head`` instead of ``d_model`` multiply-adds per
MLP input feature; ``scale(mid')`` needs ``mid'`` itself, which is cheap (``d_model`` per token).
Exact patching's head edges go through here (``_exact_fast.py``); the result equals running the MLP on
``mid'`` up to rounding: ``tests/integration/test_mlp_after_heads.py`` checks it against the MLP run on the
changed row through the model's own norm, and exact's scores against the bridge's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..models._norm_parts import NormParts
from ._layer_pieces import LayerPieces


@dataclass(frozen=True)
class MLPAfterHeads:
    """One layer's clean MLP input product and per-head products, for :meth:`hidden`."""

    norm: NormParts
    clean: Float[Tensor, "batch pos mlp_in"]  # centre(clean mid) W'
    per_head: Float[Tensor, "heads_d_head mlp_in"]  # centre(W_O^h) W', heads one after another
    bias: Float[Tensor, " mlp_in"]  # bias W_in + b_in
    d_head: int

    @classmethod
    def of(cls, pieces: LayerPieces, layer: int, norm: NormParts,
           clean_mid: Float[Tensor, "batch pos d"]) -> MLPAfterHeads:
        w = pieces.layers[layer]
        weighted = norm.weight[:, None] * w.W_mlp_in
        # centring is linear: centre(dz W_O) = dz centre(W_O), row by row, so the mean term folds in here
        per_head = norm.centre(w.W_O).flatten(0, 1) @ weighted
        return cls(norm, norm.centre(clean_mid) @ weighted, per_head,
                   torch.addmv(w.b_mlp_in, w.W_mlp_in.t(), norm.bias), w.W_O.shape[1])

    def worth_it(self, readers: int) -> bool:
        """Whether ``readers`` heads' products (``readers * d_head`` per feature) beat the full product's
        ``d_model``."""
        return readers * self.d_head < self.norm.weight.shape[0]

    def hidden(self, readers: slice, dz: Float[Tensor, "rows batch pos readers_d_head"],
               mid: Float[Tensor, "rows batch pos d"]) -> Float[Tensor, "rows batch pos mlp_in"]:
        """The MLP's input product (bias included) at ``mid`` (every position), the clean mid changed only by
        the query heads ``readers`` (consecutive: one query head, or a key/value head's group), whose outputs
        moved by ``dz`` (side by side)."""
        products = self.per_head[readers.start * self.d_head : readers.stop * self.d_head]
        out = (dz.flatten(0, -2) @ products).view(*dz.shape[:-1], -1)
        out += self.clean
        return torch.addcmul(self.bias, out, self.norm.scale(mid))
