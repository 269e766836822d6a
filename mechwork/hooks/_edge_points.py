"""Hooks at the edge graph's access points, whichever route the model's structure says serves them.

Every edge-level intervention (the patch-mask engine, gradients at destinations, exact patching, path
patching) reads node outputs and rewrites destination inputs through these builders, so none of them
knows whether the bridge has ``hook_result`` / ``hook_{q,k,v}_input`` / ``hook_mlp_in`` or mechwork
computes them (``models/_edge_access.py``):

- ``head_output_hooks(model, layer, record)``: ``record(writes)`` with ``[batch, pos, heads, d_model]``;
- ``head_input_hooks(model, layer, port, edit)`` and ``mlp_input_hooks(model, layer, edit)``: ``edit``
  receives the destination's own pre-norm input (``[batch, pos, heads of the port, d_model]`` or
  ``[batch, pos, d_model]``) and returns its replacement, or ``None`` to leave it as it is;
- ``attention_input_grad_hooks`` / ``mlp_input_grad_hooks`` / ``logits_input_grad_hooks``: ``store`` receives
  the metric's gradient at those same inputs during the backward (under ``edge_flags(..., gradients=True)``).
  Where the model allows it (``EdgeAccess.head_input_grads``) the heads' gradients are computed from the
  gradient at ``attn.hook_{q,k,v}`` instead of from per-head input copies, which would keep
  ``[batch, pos, heads, d_model]`` per port and layer alive for the backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

from torch import Tensor

from ..models._edge_access import Access, head_input_grads, head_writes, norm_module, project_heads
from ..models._structure import structure_of
from ._runner import hook_flags

Edit = Callable[[Tensor], Tensor | None]


def edge_flag_values(model, *, outputs: bool, inputs: bool, gradients: bool = False) -> dict[str, bool]:
    """The bridge flags the access points need (``hook_flags`` keywords): only routes the bridge serves.
    ``gradients``: the inputs are only tapped for gradients (``*_grad_hooks``)."""
    access = structure_of(model).edge_access
    copies = inputs and access.head_inputs is Access.BRIDGE and not (gradients and access.head_input_grads)
    return {"attn_result": outputs and access.head_outputs is Access.BRIDGE,
            "split_qkv": copies,
            "mlp_in": inputs and access.mlp_inputs is Access.BRIDGE}


def edge_flags(model, *, outputs: bool, inputs: bool, gradients: bool = False) -> contextlib.AbstractContextManager:
    return hook_flags(model, **edge_flag_values(model, outputs=outputs, inputs=inputs, gradients=gradients))


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


def _tap(store: Callable[[Tensor], None]) -> Edit:
    def edit(act: Tensor) -> Tensor:
        # A fresh tensor: the bridge may pass the same tensor on along the residual stream (hook_mlp_in
        # is resid_mid itself), and only the gradient through this destination's input is wanted.
        tapped = act.clone()
        tapped.register_hook(lambda grad: store(grad.detach()))
        return tapped

    return edit


def attention_input_grad_hooks(model, layer: int, store: Callable[[Tensor, slice], None]) -> list:
    """``store(grad, rows)`` with the gradient at the heads' own q/k/v inputs, ``[batch, pos, heads, d_model]``,
    once per backward; ``rows``: where those heads sit among the layer's heads in port order (query heads,
    then key heads, then value heads). With the gradient route all three ports come in one call."""
    structure = structure_of(model)
    counts = [structure.n_heads, structure.n_kv_heads, structure.n_kv_heads]
    offsets = [sum(counts[:p]) for p in range(len(counts) + 1)]
    if not structure.edge_access.head_input_grads:
        hooks = []
        for p, port in enumerate("qkv"):
            rows = slice(offsets[p], offsets[p + 1])
            hooks += head_input_hooks(model, layer, port, _tap(lambda grad, rows=rows: store(grad, rows)))
        return hooks
    block = model.blocks[layer]
    arrived: dict[str, Tensor] = {}  # this backward's projection gradients, until ln1's input gradient

    def all_arrived(x: Tensor, _grad: Tensor) -> None:
        # The gradient at ln1's input is complete only once q, k and v have sent theirs back through ln1:
        # every port the metric depends on has arrived.
        present = {port: arrived.pop(port) for port in "qkv" if port in arrived}
        if len(present) == 3:
            store(head_input_grads(block, x, present), slice(0, offsets[-1]))
            return
        for port, grad in present.items():  # a port the metric does not depend on: the others at their rows
            p = "qkv".index(port)
            store(head_input_grads(block, x, {port: grad}), slice(offsets[p], offsets[p + 1]))

    def watch_norm_input(act: Tensor, hook) -> None:
        if act.requires_grad:
            act.register_hook(partial(all_arrived, act.detach()))

    def tap_projection(port: str):
        def hook(act: Tensor, hook) -> Tensor:
            tapped = act.clone()  # its own tensor: the gradient through this port alone
            tapped.register_hook(lambda grad: arrived.__setitem__(port, grad.detach()))
            return tapped

        return hook

    return [(f"blocks.{layer}.ln1.hook_in", watch_norm_input)] + [
        (f"blocks.{layer}.attn.hook_{port}", tap_projection(port)) for port in "qkv"]


def mlp_input_grad_hooks(model, layer: int, store: Callable[[Tensor], None]) -> list:
    """``store(grad)`` with the gradient at the MLP's own input, ``[batch, pos, d_model]``."""
    return mlp_input_hooks(model, layer, _tap(store))


def logits_input_grad_hooks(model, n_layers: int, store: Callable[[Tensor], None]) -> list:
    """``store(grad)`` with the gradient at the residual stream the unembedding reads, ``[batch, pos, d_model]``."""
    tap = _tap(store)
    return [(f"blocks.{n_layers - 1}.hook_resid_post", lambda act, hook: tap(act))]
