"""Edge attributions from metric gradients at every destination's input (EAP, EAP-IG), layer by layer.

For edge u->d, ablating it moves d's input by ``ablated_u - out_u``; to first order the metric moves by
``(ablated_u - out_u) . dM/dx_d``. One backward pass gives ``dM/dx_d`` for every destination at once.

Memory is what sets how many prompts fit, so nothing here is kept longer than it is needed:

- the first (clean) forward writes each source's delta ``out_u - ablated_u`` as the source is computed,
  into the ablation values' own buffer where the caller hands it over (one ``[batch, pos, sources,
  d_model]`` buffer in all, not outputs, ablation values and deltas side by side);
- each destination's gradient is multiplied by the deltas of the sources it reads in the backward hook
  that receives it, and dropped: no per-destination gradient buffer;
- where the model allows it (``EdgeAccess.head_input_grads``), the heads' q/k/v input gradients come
  from the gradient at the projections (``hooks/_edge_points.py``), so the forward keeps no per-head
  input copies for the backward (on GPT-2 small at 8 x 128 tokens those were 1.3 GiB).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from ..graph import PORTS, Graph
from ..graph._engine import normed_head_deltas, output_hooks
from ..hooks._attribution import frozen_parameters
from ..hooks._edge_points import attention_input_grad_hooks, edge_flags, logits_input_grad_hooks, mlp_input_grad_hooks
from ..hooks._head_writes import head_writes_of
from ..hooks._runner import run_from
from ..metrics import metric_value
from ._types import DiscoveryTask


def _products(grad: Float[Tensor, "batch pos rows d_model"], deltas: Float[Tensor, "batch pos n d_model"],
              positional: bool) -> Float[Tensor, "P rows n"]:
    """``grad . delta`` for every (row, source) pair, summed over the batch and, unless ``positional``, over
    positions (``P`` = pos or 1). One batched product per (prompt, position): ``deltas`` is a slice of the
    shared buffer and is read in place, never copied."""
    b, p, rows, d = grad.shape
    n = deltas.shape[2]
    per_point = torch.bmm(grad.float().reshape(b * p, rows, d), deltas.reshape(b * p, n, d).transpose(1, 2))
    summed = per_point.view(b, p, rows, n).sum(0)
    return summed if positional else summed.sum(0, keepdim=True)


@dataclass
class _Products:
    """Every destination group's ``grad . delta`` products, summed over the points as their gradients arrive."""

    graph: Graph
    deltas: Tensor | None = None  # [batch, pos, sources, d_model] float32, filled by the first forward
    sums: dict[tuple, Tensor] = field(default_factory=dict)

    def receiver(self, key: tuple, n_sources: int) -> Callable[[Tensor], None]:
        """Takes a destination's gradient, ``[batch, pos, d_model]``."""
        return lambda grad: self.add(key, n_sources, grad.unsqueeze(2), slice(0, 1), 1)

    def add(self, key: tuple, n_sources: int, grad: Float[Tensor, "batch pos rows d_model"], rows: slice,
            n_rows: int) -> None:
        """Adds ``grad``'s products to rows ``rows`` of the group's ``n_rows``."""
        assert self.deltas is not None, "a gradient arrived before the deltas were recorded"
        part = _products(grad, self.deltas[:, :, :n_sources], self.graph.positions is not None)
        if key not in self.sums:
            self.sums[key] = part.new_zeros(part.shape[0], n_rows, n_sources)
        self.sums[key][:, rows] += part

    def flat(self, scale: float) -> Float[Tensor, " edges"]:
        """The edge scores in the graph's order: per layer its heads' ports (port, head, source), then its
        MLP, then the logits; ``-scale`` times the summed products (a destination no gradient reached: 0)."""
        graph = self.graph
        positions = 1 if graph.positions is None else graph.positions
        device = self.deltas.device

        def part(key: tuple, rows: int, n: int) -> Tensor:
            found = self.sums.get(key)
            return torch.zeros(positions, rows, n, device=device) if found is None else found

        parts = []
        for layer in range(graph.n_layers):
            n_attn, n_mlp = graph.n_sources_attn(layer), graph.n_sources_mlp(layer)
            heads = part((layer, "attn"), _attention_rows(graph), n_attn)  # q heads, k heads, v heads
            parts += [heads.flatten(1), part((layer, "mlp"), 1, n_mlp).flatten(1)]
        parts.append(part(("logits",), 1, graph.n_sources).flatten(1))
        return (-torch.cat(parts, dim=-1) * scale).flatten()


def _attention_rows(graph: Graph) -> int:
    return sum(graph.port_heads(p) for p in range(len(PORTS)))


def _gradient_hooks(model, graph: Graph, products: _Products) -> list:
    hooks = []
    for layer in range(graph.n_layers):
        store = partial(products.add, (layer, "attn"), graph.n_sources_attn(layer), n_rows=_attention_rows(graph))
        hooks += attention_input_grad_hooks(model, layer, lambda grad, rows, store=store: store(grad, rows))
        hooks += mlp_input_grad_hooks(model, layer, products.receiver((layer, "mlp"), graph.n_sources_mlp(layer)))
    return hooks + logits_input_grad_hooks(model, graph.n_layers, products.receiver(("logits",), graph.n_sources))


def _delta_buffer(resid: Tensor, ablated: Tensor, n_sources: int, reuse: bool) -> Tensor:
    """Where the deltas go: the ablation values' own buffer when the caller hands it over and it has the
    right shape and dtype (each source's slice is read before it is overwritten), else a new one."""
    shape = (*resid.shape[:2], n_sources, resid.shape[-1])
    if reuse and tuple(ablated.shape) == shape and ablated.dtype == torch.float32 and ablated.is_contiguous():
        return ablated
    return resid.new_empty(shape, dtype=torch.float32)


def _recording_deltas(model, graph: Graph, products: _Products, resid: Tensor, ablated: Tensor,
                      reuse: bool) -> list:
    """Hooks writing ``out_u - ablated_u`` of every source into ``products.deltas`` as the forward computes
    them (heads behind a norm on their sum: its first order, as the mask gradient sees them)."""
    buffer = _delta_buffer(resid, ablated, graph.n_sources, reuse)
    buffer[:, :, 0] = resid.detach().float() - ablated[:, :, 0].float()
    writes = head_writes_of(model)
    normed = {graph.head_source(layer, 0): layer for layer in writes.normed_layers()}

    def record(i: int, value: Tensor) -> None:
        value = value.detach()
        sources = slice(i, i + value.shape[2])
        delta = value - ablated[:, :, sources].to(value.dtype)
        if i in normed:
            delta = normed_head_deltas(writes, normed[i], value, delta, linear=True)
        buffer[:, :, sources] = delta.float()

    products.deltas = buffer
    return output_hooks(model, graph, record)


def edge_attributions(model, graph: Graph, task: DiscoveryTask, points: Sequence[Float[Tensor, "batch pos d_model"]],
                      ablated: Tensor, *, reuse_ablated: bool = False, scale: float = 1.0) -> Float[Tensor, " edges"]:
    """``-scale * sum over points of (out_u - ablated_u) . dM/dx_d`` for every edge u->d, summed over the
    batch and, unless the graph is resolved by position, over positions (the metric already averages over
    the batch), in float32 on the model's device. ``points``: embedding-level inputs, the first of them the
    clean input (its run gives ``out_u``). ``reuse_ablated``: the deltas may overwrite ``ablated``."""
    products = _Products(graph)
    gradient_hooks = _gradient_hooks(model, graph, products)
    with frozen_parameters(model):
        for i, point in enumerate(points):
            hooks = gradient_hooks
            if i == 0:
                hooks = gradient_hooks + _recording_deltas(model, graph, products, point, ablated, reuse_ablated)
            # only the first forward reads the node outputs: the others run without the per-head result hook
            with edge_flags(model, outputs=i == 0, inputs=True, gradients=True), torch.enable_grad():
                x = point.detach().requires_grad_(True)
                logits = run_from(model, x, 0, position=task.position, fwd_hooks=hooks)
                metric_value(task.metric, logits).backward()
    return products.flat(scale)
