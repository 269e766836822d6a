"""EAP — edge attribution patching (Syed et al. 2023): every edge from two forwards and one backward.

score(u->d) = (ablated_u - clean_u) . dM/dx_d on the clean run: the first-order change of the metric
when u's contribution to d is replaced by its ablation value. Linear in the metric's gradient, so
micro-batches (``task.batch_size``) add up to the one-batch scores exactly.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..hooks._runner import embed
from ._gradients import edge_attributions
from ._registry import register_method
from ._spread import summed_over_batches
from ._types import DiscoveryTask, EdgeScores


def _batch_scores(model, graph, task: DiscoveryTask) -> Float[Tensor, " edges"]:
    ablated = task.ablated(model, graph)  # the corrupted forward (or the shared mean)
    with torch.no_grad():
        resid = embed(model, task.clean)
    # the clean forward + backward; a batch's own ablation values may be overwritten by the deltas
    return edge_attributions(model, graph, task, [resid], ablated, reuse_ablated=task.shared_ablation is None)


@register_method("eap", "edge attribution patching: 2 forwards + 1 backward, first-order estimate", executor=None)
def eap(model, graph, task: DiscoveryTask, executor=None) -> EdgeScores:
    """``executor`` (``"ray"``, a :class:`~mechwork.executors.Executor`): each micro-batch a unit on its workers."""
    scores = summed_over_batches(model, graph, task, _batch_scores, executor=executor)
    return EdgeScores(graph, scores.cpu(), "eap")
