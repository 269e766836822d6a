"""Node patching: head- and MLP-level activation patching through the hooks layer.

Each head's output (``hook_z``) and each MLP's output is patched, one at a time, from the ablated
run into the clean run. A node's score is the metric change; an edge inherits the smaller magnitude
of its two endpoints' scores (the input and the logits count as always important), so an edge ranks
high only when both its ends matter. Needs the ``corrupted`` ablation (it patches real activations).
"""

from __future__ import annotations

import torch

from .._nodes import head_node, mlp_node
from ..hooks import activation_patching
from ..hooks._validation import InputError
from ._registry import register_method
from ._types import DiscoveryTask, EdgeScores


@register_method("node-patching", "head/MLP activation patching (hooks layer); edges scored by their endpoints")
def node_patching(model, graph, task: DiscoveryTask) -> EdgeScores:
    if task.ablation != "corrupted":
        raise InputError("node-patching patches corrupted activations; use ablation='corrupted'")
    runs = {site: activation_patching(model, task.clean, task.corrupted, task.metric, site, direction="noise",
                                      batch_size=task.batch_size)
            for site in ("z", "mlp_out")}
    base = runs["z"].clean_value
    node_scores = {}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            node_scores[head_node(layer, h)] = float(runs["z"].values[layer, h]) - base
        node_scores[mlp_node(layer)] = float(runs["mlp_out"].values[layer]) - base
    ceiling = max(abs(v) for v in node_scores.values()) + 1.0  # the input and the logits always matter
    magnitude = torch.tensor([abs(node_scores.get(n, ceiling)) for n in graph.nodes])
    ends = graph.endpoint_tensor
    scores = torch.minimum(magnitude[ends[:, 0]], magnitude[ends[:, 1]])
    return EdgeScores(graph, scores, "node-patching", ranking="signed", node_scores=node_scores)
