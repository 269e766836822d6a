"""EAP-IG — edge attribution patching with integrated gradients over the inputs (Hanna et al. 2024).

The gradient at each destination is averaged over ``steps`` points on the straight line from the
ablated to the clean input embeddings (MIB's ``inputs`` variant, default 5 steps), which repairs EAP
where the metric is flat or saturated at the clean point:

    score(u->d) = (ablated_u - clean_u) . (1/steps) sum_{k=1..steps} dM/dx_d at x_0 = a + (k/steps) (c - a)

with ``a``, ``c`` the ablated and clean input embeddings and ``clean_u`` u's output on the clean
prompts: a right Riemann sum, whose last point is the clean input, so ``steps=1`` is EAP. (Hanna et
al.'s code, which MIB runs, takes k = 0..steps-1 instead: the left sum, from the ablated input and
without the clean one. Both converge to the same integral.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..hooks._runner import embed
from ._gradients import edge_attributions
from ._registry import register_method
from ._spread import summed_over_batches
from ._types import DiscoveryTask, EdgeScores


def _batch_scores(model, graph, task: DiscoveryTask, steps: int) -> Tensor:
    ablated = task.ablated(model, graph)
    with torch.no_grad():
        clean_resid = embed(model, task.clean)
    # The input node's ablation value is the ablated embedding; interpolate from there to the clean one.
    # The last point is the clean input itself: run it first and record the clean node outputs on the way
    # (the sum over points does not depend on their order), which saves a separate clean forward.
    start = ablated[:, :, 0].to(clean_resid.dtype).expand_as(clean_resid)
    points = [clean_resid] + [start + (k / steps) * (clean_resid - start) for k in range(1, steps)]
    return edge_attributions(model, graph, task, points, ablated, reuse_ablated=task.shared_ablation is None,
                             scale=1.0 / steps)


@register_method("eap-ig", "EAP with integrated gradients over the input embeddings", steps=5, executor=None)
def eap_ig(model, graph, task: DiscoveryTask, steps: int = 5, executor=None) -> EdgeScores:
    """``executor`` (``"ray"``, a :class:`~mechwork.executors.Executor`): each micro-batch a unit on its workers."""
    if steps < 1:
        raise ValueError(f"eap-ig needs at least one step, got {steps}")
    scores = summed_over_batches(model, graph, task, _batch_scores, steps, executor=executor)
    return EdgeScores(graph, scores.cpu(), "eap-ig")
