"""Patchable activation sites and the per-variant masks that select what one patch replaces."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

from ..models import structure_of


class Site(StrEnum):
    """What to patch. Values are TransformerLens activation names."""

    RESID_PRE = "resid_pre"  # blocks.{l}.hook_resid_pre      [batch, pos, d_model]
    RESID_MID = "resid_mid"  # blocks.{l}.hook_resid_mid      [batch, pos, d_model]
    RESID_POST = "resid_post"  # blocks.{l}.hook_resid_post   [batch, pos, d_model]
    ATTN_OUT = "attn_out"  # blocks.{l}.hook_attn_out         [batch, pos, d_model]
    MLP_OUT = "mlp_out"  # blocks.{l}.hook_mlp_out            [batch, pos, d_model]
    Z = "z"  # blocks.{l}.attn.hook_z                         [batch, pos, head, d_head]
    Q = "q"  # blocks.{l}.attn.hook_q                         [batch, pos, head, d_head]
    # k, v: one per key/value head (fewer than the query heads under grouped-query attention)
    K = "k"  # blocks.{l}.attn.hook_k                         [batch, pos, kv_head, d_head]
    V = "v"  # blocks.{l}.attn.hook_v                         [batch, pos, kv_head, d_head]
    RESULT = "result"  # blocks.{l}.attn.hook_result          [batch, pos, head, d_model]
    PATTERN = "pattern"  # blocks.{l}.attn.hook_pattern       [batch, head, query_pos, key_pos]

    @classmethod
    def parse(cls, value: str | Site) -> Site:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown patching site {value!r}; choose one of: {names}") from None

    @property
    def per_head(self) -> bool:
        return self in _HEAD_SITES

    def n_heads(self, model) -> int:
        """Size of this site's head axis on ``model``: key/value heads for k and v, else query heads."""
        structure = structure_of(model)
        return structure.n_kv_heads if self in (Site.K, Site.V) else structure.n_heads

    def served_by(self, model, layer: int) -> str:
        """The hook patched for this site on ``model``: its own, except ``result`` on a bridge without a
        per-head result hook (GPT-Neo, GPT-J, OPT), where ``hook_z`` serves. Each head's result is its z
        times its own slice of ``W_O``, so patching one or the other moves everything downstream the same,
        and the first-order attributions (``(z' - z) . dM/dz = (r' - r) . dM/dr``) are equal too."""
        if self is Site.RESULT and not self.uses_result_hook(model):
            return f"blocks.{layer}.attn.hook_z"
        return self.hook_name(layer)

    def uses_result_hook(self, model) -> bool:
        """Does serving this site need the bridge's ``hook_result`` switched on?"""
        return self is Site.RESULT and structure_of(model).head_result_hook

    def hook_name(self, layer: int) -> str:
        if self.per_head:
            return f"blocks.{layer}.attn.hook_{self.value}"
        return f"blocks.{layer}.hook_{self.value}"

    def mask_shape(self, n_pos: int, n_heads: int) -> tuple[int, ...]:
        """Mask shape over one example's activation, size 1 on the axes a patch always covers."""
        if self is Site.PATTERN:
            return (n_heads, n_pos, 1)
        if self.per_head:
            return (n_pos, n_heads, 1)
        return (n_pos, 1)

    def variant_mask(self, n_pos: int, n_heads: int, head: int | None, pos: int | None) -> Tensor:
        mask = torch.zeros(self.mask_shape(n_pos, n_heads), dtype=torch.bool)
        pos_sel = slice(None) if pos is None else pos
        if self is Site.PATTERN:
            mask[head, pos_sel] = True  # pos is the query (destination) position
        elif self.per_head:
            mask[pos_sel, head] = True
        else:
            mask[pos_sel] = True
        return mask


_HEAD_SITES = {Site.Z, Site.Q, Site.K, Site.V, Site.RESULT, Site.PATTERN}


@dataclass(frozen=True)
class Variant:
    """One patch: which layer, and which head / position within it (None: all)."""

    layer: int
    head: int | None
    pos: int | None
