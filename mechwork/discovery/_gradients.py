"""Metric gradients at every destination's input, and their product with source deltas (EAP, EAP-IG).

For edge u->d, ablating it moves d's input by ``ablated_u - out_u``; to first order the metric moves by
``(ablated_u - out_u) . dM/dx_d``. One backward pass gives ``dM/dx_d`` for every destination at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..graph import PORTS, Graph
from ..graph._engine import recording_outputs
from ..hooks._attribution import frozen_parameters
from ..hooks._edge_points import edge_flags, head_input_hooks, mlp_input_hooks
from ..hooks._runner import run_from
from ..metrics import as_scalar, metric_name, metric_value
from ._types import DiscoveryTask


@dataclass
class DestinationGrads:
    """Summed gradients per destination group (same layout as the graph's mask groups, with batch/pos)."""

    attn: list[list[Tensor]]  # per layer, per port (q, k, v): [batch, pos, heads of the port, d_model]
    mlp: list[Tensor]  # per layer [batch, pos, d_model]
    logits: Tensor  # [batch, pos, d_model]
    metric_values: list[float]
    outputs: Tensor | None = None  # node outputs of the first run, when asked for


def _grad_hooks(model, graph: Graph, grads: DestinationGrads) -> list:
    def tap(store):
        def edit(act: Tensor) -> Tensor:
            # A fresh tensor: the bridge may pass the same tensor on along the residual stream (hook_mlp_in
            # is resid_mid itself), and only the gradient through this destination's input is wanted.
            tapped = act.clone()
            tapped.register_hook(store)
            return tapped

        return edit

    def into_attn(layer: int, p: int):
        def store(g: Tensor) -> None:
            grads.attn[layer][p] += g.detach()

        return store

    def into(target: Tensor):
        def store(g: Tensor) -> None:
            target.add_(g.detach())

        return store

    hooks = []
    for layer in range(graph.n_layers):
        for p, port in enumerate(PORTS):
            hooks += head_input_hooks(model, layer, port, tap(into_attn(layer, p)))
        hooks += mlp_input_hooks(model, layer, tap(into(grads.mlp[layer])))
    tap_logits = tap(into(grads.logits))
    hooks.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", lambda act, hook: tap_logits(act)))
    return hooks


def destination_grads(
    model,
    graph: Graph,
    task: DiscoveryTask,
    residuals: list[Float[Tensor, "batch pos d_model"]],
    record_outputs: bool = False,
) -> DestinationGrads:
    """Sum over ``residuals`` (embedding-level inputs) of dM/dx at every destination input.

    With ``record_outputs``, every node's output in the first run is kept in ``grads.outputs``
    (``[batch, pos, sources, d_model]``), so a caller that needs them saves a forward.
    """
    b, p, d = residuals[0].shape

    def zeros(*shape: int) -> Tensor:  # summed over points in float32, whatever the model's dtype
        return residuals[0].new_zeros(*shape, dtype=torch.float32)

    grads = DestinationGrads(
        attn=[[zeros(b, p, graph.port_heads(port), d) for port in range(3)] for _ in range(graph.n_layers)],
        mlp=[zeros(b, p, d) for _ in range(graph.n_layers)],
        logits=zeros(b, p, d),
        metric_values=[],
    )
    hooks = _grad_hooks(model, graph, grads)
    first_hooks = hooks
    if record_outputs:
        grads.outputs, recorders = recording_outputs(model, graph, residuals[0])
        first_hooks = hooks + recorders
    with edge_flags(model, outputs=record_outputs, inputs=True), frozen_parameters(model):
        for i, resid in enumerate(residuals):
            hooks_now = first_hooks if i == 0 else hooks
            with torch.enable_grad():
                x = resid.detach().requires_grad_(True)
                logits = run_from(model, x, 0, position=task.position, fwd_hooks=hooks_now)
                value = metric_value(task.metric, logits)
                grads.metric_values.append(as_scalar(value, metric_name(task.metric)))
                value.backward()
    return grads


def _source_major(x: Tensor, positional: bool) -> Tensor:
    """``[batch, pos, n, d]`` -> ``[pos, n, batch*d]`` (positional) or ``[1, n, pos*batch*d]``: the layout
    in which every destination group's edge scores are one (batched) matrix product."""
    b, p, n, d = x.shape
    if positional:
        return x.permute(1, 2, 0, 3).reshape(p, n, b * d)
    return x.permute(2, 1, 0, 3).reshape(1, n, p * b * d)


def edge_attributions(graph: Graph, deltas: Tensor, grads: DestinationGrads, scale: float = 1.0) -> Tensor:
    """``-(out_u - ablated_u) . grad_d`` for every edge, summed over batch and, unless the graph
    is resolved by position, over positions (the metric already averages over the batch), in float32
    on the model's device. ``deltas``: ``[batch, pos, sources, d_model]``."""
    positional = graph.positions is not None
    deltas = deltas.float()
    d_src = _source_major(deltas.expand(grads.logits.shape[0], -1, -1, -1), positional)  # [P, sources, K]
    parts = []
    for layer in range(graph.n_layers):
        n_attn, n_mlp = graph.n_sources_attn(layer), graph.n_sources_mlp(layer)
        g_attn = _source_major(torch.cat(grads.attn[layer], dim=2), positional)  # [P, q+k+v heads, K]
        parts.append(torch.matmul(g_attn, d_src[:, :n_attn].transpose(1, 2)).flatten(1))  # port, head, source
        g_mlp = _source_major(grads.mlp[layer].unsqueeze(2), positional)
        parts.append(torch.matmul(g_mlp, d_src[:, :n_mlp].transpose(1, 2)).flatten(1))
    g_logits = _source_major(grads.logits.unsqueeze(2), positional)
    parts.append(torch.matmul(g_logits, d_src.transpose(1, 2)).flatten(1))
    flat = torch.cat(parts, dim=-1)  # [P, edges per position]
    return (-flat * scale).flatten()
