"""Learned edge mask (edge-mask optimisation / subnetwork probing, as in MIB's mask-learning methods).

A logit per edge gives a mask ``sigmoid(logit)`` used in the patch-mask engine. Adam minimises
``KL(full model || masked model) + sparsity * mean(mask)``: edges the task needs keep a high mask
value, the rest are pushed to zero. The learned logits are the edge scores (signed ranking).
Deterministic: no sampling, fixed initialisation.
"""

from __future__ import annotations

import torch

from ..graph import masked_forward
from ..hooks._attribution import frozen_parameters
from ..hooks._runner import embed
from ..metrics import KLDivergence
from ._registry import register_method
from ._types import DiscoveryTask, EdgeScores


@register_method("learned-mask", "edge-mask optimisation: sigmoid masks trained for faithfulness + sparsity",
                 steps=150, lr=0.1, sparsity=0.1, init=3.0)
def learned_mask(model, graph, task: DiscoveryTask, steps: int = 150, lr: float = 0.1, sparsity: float = 0.1,
                 init: float = 3.0) -> EdgeScores:
    with torch.no_grad():
        resid = embed(model, task.clean)
        ablated = task.ablated(model, graph)
        full = masked_forward(model, graph, resid, graph.full_mask(1.0), ablated, position=task.position)
    kl = KLDivergence(position=task.position, reference=full)
    logits = torch.full((graph.n_edges,), float(init), device=resid.device, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    with frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            mask = torch.sigmoid(logits)
            out = masked_forward(model, graph, resid, mask, ablated, position=task.position)
            loss = kl.score(out) + sparsity * mask.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return EdgeScores(graph, logits.detach().cpu().float(), "learned-mask", ranking="signed")
