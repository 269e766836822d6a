"""Hooks at the edge graph's access points, whichever route the model's structure says serves them.

Every edge-level intervention (the patch-mask engine, gradients at destinations, exact patching, path
patching) reads node outputs and rewrites destination inputs through these builders, so none of them
knows whether the bridge has ``hook_result`` / ``hook_{q,k,v}_input`` / ``hook_mlp_in`` or mechwork
computes them (``models/_edge_access.py``):

- ``head_output_hooks(model, layer, record)``: ``record(writes)`` with ``[batch, pos, heads, d_model]``;
- ``head_input_hooks(model, layer, port, edit)`` and ``mlp_input_hooks(model, layer, edit)``: ``edit``
  receives the destination's own pre-norm input (``[batch, pos, heads of the port, d_model]`` or
  ``[batch, pos, d_model]``) and returns its replacement, or ``None`` to leave it as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from torch import Tensor

from ..models._edge_access import Access, head_writes, norm_module, project_heads
from ..models._structure import structure_of
from ._runner import hook_flags

Edit = Callable[[Tensor], Tensor | None]


def edge_flag_values(model, *, outputs: bool, inputs: bool) -> dict[str, bool]:
    """The bridge flags the access points need (``hook_flags`` keywords): only routes the bridge serves."""
    access = structure_of(model).edge_access
    return {"attn_result": outputs and access.head_outputs is Access.BRIDGE,
            "split_qkv": inputs and access.head_inputs is Access.BRIDGE,
            "mlp_in": inputs and access.mlp_inputs is Access.BRIDGE}


def edge_flags(model, *, outputs: bool, inputs: bool) -> contextlib.AbstractContextManager:
    return hook_flags(model, **edge_flag_values(model, outputs=outputs, inputs=inputs))


def head_output_hooks(model, layer: int, record: Callable[[Tensor], None]) -> list:
    if structure_of(model).edge_access.head_outputs is Access.BRIDGE:
        return [(f"blocks.{layer}.attn.hook_result", lambda act, hook: record(act))]
    block = model.blocks[layer]
    return [(f"blocks.{layer}.attn.hook_z", lambda z, hook: record(head_writes(block, z)))]


def head_input_hooks(model, layer: int, port: str, edit: Edit) -> list:
    if structure_of(model).edge_access.head_inputs is Access.BRIDGE:
        return [(f"blocks.{layer}.hook_{port}_input", lambda act, hook: edit(act))]
    block = model.blocks[layer]
    keep, pre_norm = _keep_pre_norm(layer)

    def replace(act: Tensor, hook) -> Tensor | None:
        x = pre_norm()
        copies = edit(x.unsqueeze(2).expand(*x.shape[:2], act.shape[2], x.shape[-1]))
        return None if copies is None else project_heads(block, port, copies).to(act.dtype)

    return [keep, (f"blocks.{layer}.attn.hook_{port}", replace)]


def mlp_input_hooks(model, layer: int, edit: Edit) -> list:
    route = structure_of(model).edge_access.mlp_inputs
    if route is Access.BRIDGE:
        return [(f"blocks.{layer}.hook_mlp_in", lambda act, hook: edit(act))]
    if route is Access.NORM_INPUT:  # ln2's input is the MLP's own copy of the residual (the probe checked)
        return [(f"blocks.{layer}.ln2.hook_in", lambda act, hook: edit(act))]
    # a parallel block sharing ln1: the MLP reads ln1(resid_pre), which the probe checked
    block = model.blocks[layer]
    keep, pre_norm = _keep_pre_norm(layer)

    def replace(act: Tensor, hook) -> Tensor | None:
        x = edit(pre_norm())
        return None if x is None else norm_module(block)(x).to(act.dtype)

    return [keep, (f"blocks.{layer}.mlp.hook_in", replace)]


def _keep_pre_norm(layer: int):
    """A hook keeping the residual ``ln1`` reads in this forward, and a getter for it."""
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        seen["x"] = act

    def get() -> Tensor:
        return seen["x"]

    return (f"blocks.{layer}.ln1.hook_in", keep), get

