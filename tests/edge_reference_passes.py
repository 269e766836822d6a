"""Brute-force edge ablation by repeated forward passes, with only the bridge's plain hook points.

A second, independent reference (beside ``tests/edge_reference.py``) that needs none of the edge-level
hooks (``attn.hook_result``, ``hook_{q,k,v}_input``, ``hook_mlp_in``), so it also checks the families
where mechwork computes them (GPT-Neo, GPT-J, OPT, Phi, Falcon). It shares no code with mechwork.

- A head's write to the residual stream is the model's own output projection (``attn.o``, a plain
  ``nn.Linear``) applied to ``hook_z`` with every other head zeroed, minus the projection of zeros.
- A destination fed an ablated input: a separate pass overrides the residual its norm reads
  (``ln1.hook_in`` for heads; ``ln2.hook_in`` for the MLP, or ``ln1.hook_in`` in a block whose MLP
  shares ``ln1``) with that input, and records what the model computes from it there (``attn.hook_q``
  / ``k`` / ``v`` of that head, ``hook_mlp_out``). The main run then takes that value.
- Layers are settled bottom-up: each pass replays every value fixed so far.
- Where a layer normalises its heads' summed output before the residual add (``ln1_post``: Gemma 2/3,
  OLMo 2), a destination whose edges from some of that layer's heads are ablated reads that layer's
  write as the model's own norm computes it from the sum with those heads' writes swapped for the
  corrupted ones: a pass overrides ``ln1_post.hook_in`` with that sum and records ``ln1_post.hook_out``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from mechwork._nodes import head_node, kv_head_node, mlp_node


@contextlib.contextmanager
def _plain_hooks(model):
    """Switch the bridge's edge-level hook flags off (the plain model), restoring them after."""
    cfg = model.cfg
    saved = tuple(bool(getattr(cfg, f, False)) for f in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"))
    model.set_use_attn_result(False)
    model.set_use_split_qkv_input(False)
    model.set_use_hook_mlp_in(False)
    try:
        yield
    finally:
        if saved[0]:
            model.set_use_attn_result(True)
        if saved[1]:
            model.set_use_split_qkv_input(True)
        if saved[2]:
            model.set_use_hook_mlp_in(True)


def _mlp_reads(model, layer: int) -> str:
    block = model.blocks[layer]
    if getattr(block, "ln2", None) is not None:
        return f"blocks.{layer}.ln2.hook_in"
    # a parallel block whose MLP shares ln1, or a block with no pre-MLP norm at all (OLMo 2)
    return f"blocks.{layer}.ln1.hook_in" if getattr(block, "ln1", None) is not None else f"blocks.{layer}.mlp.hook_in"


def _attn_reads(model, layer: int) -> str:
    """The residual a block's attention reads: ``ln1``'s input, or the attention's own (OLMo 2 has no ln1)."""
    block = model.blocks[layer]
    return f"blocks.{layer}.ln1.hook_in" if getattr(block, "ln1", None) is not None else f"blocks.{layer}.attn.hook_in"


def _post_normed(model, layer: int) -> bool:
    return getattr(model.blocks[layer], "ln1_post", None) is not None


def _normed_layer(model, source: str) -> int | None:
    """The layer of a head whose write goes through ``ln1_post`` (None for every other source)."""
    parts = source.split(".")
    if len(parts) == 5 and parts[2:4] == ["attn", "head"] and _post_normed(model, int(parts[1])):
        return int(parts[1])
    return None


def _writes(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write ``[batch, pos, heads, d_model]`` through the model's own output projection."""
    o_proj = model.blocks[layer].attn.o.original_component
    none = o_proj(torch.zeros_like(z).flatten(2))
    writes = []
    for h in range(z.shape[2]):
        only = torch.zeros_like(z)
        only[:, :, h] = z[:, :, h]
        writes.append(o_proj(only.flatten(2)) - none)
    return torch.stack(writes, 2)


def _run(model, tokens, fixed: dict, capture: list[str], override: tuple[str, torch.Tensor] | None = None,
         final_add: torch.Tensor | None = None):
    """One forward with the fixed values replayed; returns logits and the captured activations."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    if override is not None:
        name, value = override
        hooks.append((name, lambda act, hook: value))
    for name, slots in fixed.items():
        def put(act, hook, slots=slots):
            act = act.clone()
            for index, value in slots.items():
                if index is None:
                    act = value.clone()
                else:
                    act[:, :, index] = value
            return act
        hooks.append((name, put))
    for name in capture:
        hooks.append((name, lambda act, hook, name=name: seen.__setitem__(name, act.detach().clone())))
    if final_add is not None:
        hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda act, hook: act + final_add))
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
    return logits, seen


def _outputs(model, tokens, fixed: dict) -> dict[str, torch.Tensor]:
    """Every source node's output, and the residual each destination's norm reads, in this run."""
    n_layers = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out", _attn_reads(model, layer),
                  f"blocks.{layer}.hook_resid_post",
                  _mlp_reads(model, layer)]
        if _post_normed(model, layer):
            names += [f"blocks.{layer}.ln1_post.hook_in", f"blocks.{layer}.ln1_post.hook_out"]
    _, seen = _run(model, tokens, fixed, sorted(set(names)))
    out = {"input": seen["blocks.0.hook_resid_pre"]}
    for layer in range(n_layers):
        writes = _writes(model, layer, seen[f"blocks.{layer}.attn.hook_z"])
        out.update({head_node(layer, h): writes[:, :, h] for h in range(writes.shape[2])})
        out[mlp_node(layer)] = seen[f"blocks.{layer}.hook_mlp_out"]
        out[f"reads.{layer}.attn"] = seen[_attn_reads(model, layer)]
        out[f"reads.{layer}.final"] = seen[f"blocks.{layer}.hook_resid_post"]
        out[f"reads.{layer}.mlp"] = seen[_mlp_reads(model, layer)]
        if _post_normed(model, layer):
            out[f"normed.{layer}.in"] = seen[f"blocks.{layer}.ln1_post.hook_in"]
            out[f"normed.{layer}.out"] = seen[f"blocks.{layer}.ln1_post.hook_out"]
    return out


@torch.no_grad()
def run_with_edges_ablated_by_passes(model, clean, corrupted, ablated: set[str]) -> torch.Tensor:
    into: dict[str, list[str]] = defaultdict(list)
    for e in ablated:
        src, dst = e.split("->")
        into[dst].append(src)
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    with _plain_hooks(model):
        corrupt = _outputs(model, corrupted, {})
        fixed: dict[str, dict] = defaultdict(dict)

        def fed(dst: str, current: dict, reads: torch.Tensor) -> torch.Tensor:
            plain = [s for s in into[dst] if _normed_layer(model, s) is None]
            x = reads + sum(corrupt[s] - current[s] for s in plain)
            for layer in sorted({_normed_layer(model, s) for s in into[dst]} - {None}):
                swapped = current[f"normed.{layer}.in"] + sum(
                    corrupt[s] - current[s] for s in into[dst] if _normed_layer(model, s) == layer)
                name = f"blocks.{layer}.ln1_post.hook_out"
                _, seen = _run(model, clean, fixed, [name], override=(f"blocks.{layer}.ln1_post.hook_in", swapped))
                x = x + seen[name] - current[f"normed.{layer}.out"]
            return x

        for layer in range(model.cfg.n_layers):
            current = _outputs(model, clean, fixed)
            for port in "qkv":
                grouped = port != "q" and n_kv != n_heads
                for h in range(n_kv if grouped else n_heads):
                    dst = f"{kv_head_node(layer, h) if grouped else head_node(layer, h)}.{port}"
                    if not into[dst]:
                        continue
                    name = f"blocks.{layer}.attn.hook_{port}"
                    x = fed(dst, current, current[f"reads.{layer}.attn"])
                    _, seen = _run(model, clean, fixed, [name], override=(_attn_reads(model, layer), x))
                    fixed[name][h] = seen[name][:, :, h]
            if into[mlp_node(layer)]:
                current = _outputs(model, clean, fixed)  # this layer's heads now as ablated
                x = fed(mlp_node(layer), current, current[f"reads.{layer}.mlp"])
                name = f"blocks.{layer}.hook_mlp_out"
                _, seen = _run(model, clean, fixed, [name], override=(_mlp_reads(model, layer), x))
                fixed[name][None] = seen[name]
        current = _outputs(model, clean, fixed)
        last = current[f"reads.{model.cfg.n_layers - 1}.final"]
        logits, _ = _run(model, clean, fixed, [], final_add=fed("logits", current, last) - last)
    return logits
