"""Brute-force edge ablation with plain TransformerLens hooks: the independent reference for tests.

Runs the clean prompts; every ablated edge SRC->DST feeds DST the corrupted run's output of SRC instead
of its output in this run. Written without mechwork's hooks layer so it can check it.
"""

from __future__ import annotations

import torch

from mechwork._nodes import edge, head_node, kv_head_node, mlp_node


def all_edges(n_layers: int, n_heads: int, parallel: bool = False, n_kv_heads: int | None = None) -> list[str]:
    """Every edge, from the block's definition: heads read everything below their layer; the MLP also
    reads its own layer's heads, except in a parallel block, where both read the block input. With fewer
    key/value heads than query heads, k and v are read by the key/value heads."""
    edges, upstream = [], ["input"]
    grouped = n_kv_heads is not None and n_kv_heads != n_heads
    for layer in range(n_layers):
        heads = [head_node(layer, h) for h in range(n_heads)]
        kv = [kv_head_node(layer, g) for g in range(n_kv_heads)] if grouped else heads
        edges += [edge(src, dst, "q") for dst in heads for src in upstream]
        edges += [edge(src, dst, p) for dst in kv for p in "kv" for src in upstream]
        mlp_reads = upstream if parallel else upstream + heads
        upstream = upstream + heads
        edges += [edge(src, mlp_node(layer)) for src in mlp_reads]
        upstream = upstream + [mlp_node(layer)]
    return edges + [edge(src, "logits") for src in upstream]


def _outputs_hooks(n_layers, n_heads, store):
    hooks = [("blocks.0.hook_resid_pre", lambda a, hook: store.__setitem__("input", a))]
    for layer in range(n_layers):
        def heads(a, hook, layer=layer):
            for h in range(n_heads):
                store[head_node(layer, h)] = a[:, :, h]
        hooks.append((f"blocks.{layer}.attn.hook_result", heads))
        keep_mlp = lambda a, hook, layer=layer: store.__setitem__(mlp_node(layer), a)  # noqa: E731
        hooks.append((f"blocks.{layer}.hook_mlp_out", keep_mlp))
    return hooks


@torch.no_grad()
def run_with_edges_ablated(model, clean, corrupted, ablated: set[str]):
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    corrupt_out: dict = {}
    with model.hooks(fwd_hooks=_outputs_hooks(n_layers, n_heads, corrupt_out)):
        model(corrupted)
    current: dict = {}

    def delta(dst: str):
        srcs = [e.split("->")[0] for e in ablated if e.split("->")[1] == dst]
        if not srcs:
            return 0.0
        return sum(corrupt_out[s] - current[s] for s in srcs)

    hooks = _outputs_hooks(n_layers, n_heads, current)
    for layer in range(n_layers):
        for port in "qkv":
            def feed(a, hook, layer=layer, port=port):
                a = a.clone()
                grouped = a.shape[2] != n_heads  # k/v inputs of grouped-query attention: one per key/value head
                for h in range(a.shape[2]):
                    node = kv_head_node(layer, h) if grouped else head_node(layer, h)
                    a[:, :, h] = a[:, :, h] + delta(f"{node}.{port}")
                return a
            hooks.append((f"blocks.{layer}.hook_{port}_input", feed))
        hooks.append((f"blocks.{layer}.hook_mlp_in", lambda a, hook, layer=layer: a + delta(mlp_node(layer))))
    hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", lambda a, hook: a + delta("logits")))
    with model.hooks(fwd_hooks=hooks):
        return model(clean)
