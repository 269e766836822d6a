"""Learned edge mask (edge-mask optimisation / subnetwork probing, as in MIB's mask-learning methods).

A logit per edge gives a mask ``sigmoid(logit)`` used in the patch-mask engine. Adam minimises
``KL(full model || masked model) + sparsity * mean(mask)``: edges the task needs keep a high mask
value, the rest are pushed to zero. The learned logits are the edge scores (signed ranking).
Deterministic: no sampling, fixed initialisation. With micro-batches, each step's gradient is the sum
of every batch's KL gradient weighted by its share of the prompts, exactly the one-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import Graph, masked_forward
from ..hooks._attribution import frozen_parameters
from ..hooks._runner import embed
from ..metrics import KLDivergence, metric_value
from ._batches import PerBatch, micro_batches
from ._registry import register_method
from ._types import DiscoveryTask, EdgeScores


@dataclass(frozen=True)
class _BatchState:
    resid: Tensor  # [batch, pos, d_model]
    ablated: Tensor
    kl: KLDivergence  # against the full model on this batch


def _state(model, graph: Graph, task: DiscoveryTask) -> _BatchState:
    with torch.no_grad():
        resid = embed(model, task.clean)
        ablated = task.ablated(model, graph)
        full = masked_forward(model, graph, resid, graph.full_mask(1.0), ablated, position=task.position)
    return _BatchState(resid, ablated, KLDivergence(position=task.position, reference=full.float()))


@register_method("learned-mask", "edge-mask optimisation: sigmoid masks trained for faithfulness + sparsity",
                 steps=150, lr=0.1, sparsity=0.1, init=3.0)
def learned_mask(model, graph, task: DiscoveryTask, steps: int = 150, lr: float = 0.1, sparsity: float = 0.1,
                 init: float = 3.0) -> EdgeScores:
    states = PerBatch(micro_batches(model, graph, task), lambda t: _state(model, graph, t))
    logits = torch.full((graph.n_edges,), float(init), device=states.first().resid.device, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)

    def kl_backward(state: _BatchState, weight: float) -> None:
        out = masked_forward(model, graph, state.resid, torch.sigmoid(logits), state.ablated, position=task.position)
        (weight * metric_value(state.kl, out)).backward()

    with frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            for weight, state in states.items():
                kl_backward(state, weight)
            (sparsity * torch.sigmoid(logits).mean()).backward()
            optimiser.step()
    return EdgeScores(graph, logits.detach().cpu().float(), "learned-mask", ranking="signed")
