"""How a layer's heads reach the residual stream: added one by one, or through a norm on their sum.

In most families attention adds ``sum_h result_h + b_O`` to the residual stream, so each head's write
is its own term and an edge from a head is one term of its destination's input. Gemma 2/3 and OLMo 2
normalise that sum first (``post_attention_layernorm``, the bridge's ``ln1_post``): the layer writes
``norm(S)`` with ``S = sum_h result_h + b_O``, and no single head has a write of its own.

mechwork keeps one source per head there too, with this meaning: ablating the edge ``h -> d`` replaces
head ``h``'s term in the sum *that destination* sees, so ``d`` reads ``norm(S - sum_h w_hd delta_h)``
from that layer instead of ``norm(S)``, where ``delta_h = result_h - ablated_h`` and ``w_hd`` is the
ablated fraction of the edge. Every other reader still sees ``norm(S)``. With every edge kept this is
the model; with none kept it is ``norm(sum_h ablated_h + b_O)``, the ablated run's own write. The edge
from the layer to ``d`` through that norm is therefore exact, but not additive over heads: the
patch-mask engine, exact patching, the gradient methods and path patching all read it from here.

The norm is the Hugging Face module behind the bridge's ``ln1_post`` (calling it fires no hook). The
MLP is one node, so a norm after it (``ln2_post``) is simply part of its output, ``hook_mlp_out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..models._edge_access import norm_module
from ..models._structure import structure_of

Norm = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HeadWrites:
    """Per layer: the norm on the heads' summed output (``None``: heads add to the residual directly),
    and the attention output bias that sum includes."""

    norms: tuple[Norm | None, ...]
    attentions: tuple[object, ...]  # the bridge's attention components, read for b_O at use (weights may move)

    @property
    def additive(self) -> bool:
        return all(norm is None for norm in self.norms)

    def normed_layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, norm in enumerate(self.norms) if norm is not None)

    def summed(self, layer: int,
               results: Float[Tensor, "batch pos heads d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """What the layer's norm reads: every head's result plus ``b_O``."""
        total = results.sum(2)
        bias = getattr(self.attentions[layer], "b_O", None)
        return total if bias is None else total + bias.detach().to(total.dtype)

    def change(self, layer: int, summed: Tensor, removed: Tensor) -> Tensor:
        """``norm(S - removed) - norm(S)``: how the layer's write moves when ``removed`` leaves its sum
        (``summed`` broadcasts against ``removed``, e.g. ``[batch, pos, 1, d]`` against per-head terms)."""
        norm = self.norms[layer]
        if norm is None:
            return -removed
        return norm(summed - removed) - norm(summed)

    def linear_change(self, layer: int, summed: Tensor, removed: Tensor) -> Tensor:
        """First order of :meth:`change` at ``S``: ``-J_norm(S) removed`` (what a mask gradient sees)."""
        norm = self.norms[layer]
        if norm is None:
            return -removed
        # J v by double backward: grad of (J^T u) . v with respect to u (torch's forward-mode AD imports
        # TorchScript decompositions that warn on this torch)
        point = summed.expand_as(removed).detach().requires_grad_(True)
        with torch.enable_grad():
            out = norm(point)
            probe = torch.zeros_like(out, requires_grad=True)
            (transposed,) = torch.autograd.grad(out, point, probe, create_graph=True)
            (tangent,) = torch.autograd.grad(transposed, probe, removed.detach())
        return -tangent


_KEY = "_mechwork_head_writes"


def head_writes_of(model) -> HeadWrites:
    """The model's :class:`HeadWrites`, read once from its declared structure and kept on it."""
    known = model.__dict__.get(_KEY)
    if known is not None:
        return known
    structure = structure_of(model)
    blocks = list(model.blocks)
    norms = tuple(norm_module(block, "ln1_post") if structure.attn_out_norm else None for block in blocks)
    model.__dict__[_KEY] = writes = HeadWrites(norms, tuple(block.attn for block in blocks))
    return writes
