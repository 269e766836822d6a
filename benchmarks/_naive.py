"""The naive edge-patching loop a user would write with plain TransformerLens hooks on the bridge.

Clean and corrupted caches are computed once. Then, for every edge ``u -> d``, one patched forward of the
clean prompts adds ``corrupted_out_u - clean_out_u`` to ``d``'s input: ``blocks.L.hook_{q,k,v}_input[:, :,
h]`` (split q/k/v inputs on) for a head, ``blocks.L.hook_mlp_in`` for an MLP, the last block's
``hook_resid_post`` (the final residual) for the logits. Ablating one edge changes nothing upstream of
``d``, so ``u``'s output in the patched run is its clean output and the added difference is exact.

Nothing here uses mechwork's hooks layer, graph engine or discovery code: only edge names and the bridge.
Each flag is on only while the edges that need it run (a fair, fastest-plain-forward baseline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mechwork._nodes import parse_node


def _keep(name: str) -> bool:
    return name == "blocks.0.hook_resid_pre" or name.endswith(("attn.hook_result", "hook_mlp_out"))


def _output(cache, source: str) -> Tensor:
    node = parse_node(source)
    if node.kind == "input":
        return cache["blocks.0.hook_resid_pre"]
    if node.kind == "head":
        return cache[f"blocks.{node.layer}.attn.hook_result"][:, :, node.head]
    return cache[f"blocks.{node.layer}.hook_mlp_out"]


def _set_flags(model, *, result: bool, split_qkv: bool, mlp_in: bool) -> None:
    cfg = model.cfg
    if bool(cfg.use_attn_result) != result:
        model.set_use_attn_result(result)
    if bool(cfg.use_split_qkv_input) != split_qkv:
        model.set_use_split_qkv_input(split_qkv)
    if bool(cfg.use_hook_mlp_in) != mlp_in:
        model.set_use_hook_mlp_in(mlp_in)


@dataclass
class NaiveRun:
    scores: dict[str, float]  # edge -> metric(patched) - metric(clean)
    seconds: dict[str, float]  # edge -> its patched forward (hook set-up and metric included)
    setup_seconds: float  # the two caches and the clean metric


@torch.no_grad()
def naive_edge_patching(model, clean: Tensor, corrupted: Tensor, metric, edges: list[str]) -> NaiveRun:
    """Score ``edges`` one patched forward each; ``metric`` is a mechwork position metric (called on the
    full ``[batch, pos, vocab]`` logits, as a user would)."""
    cfg = model.cfg
    saved = (bool(cfg.use_attn_result), bool(cfg.use_split_qkv_input), bool(cfg.use_hook_mlp_in))
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    start = time.perf_counter()
    try:
        _set_flags(model, result=True, split_qkv=False, mlp_in=False)
        _, clean_cache = model.run_with_cache(clean, names_filter=_keep)
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=_keep)
        _set_flags(model, result=False, split_qkv=False, mlp_in=False)
        base = float(metric(model(clean)))
        setup = time.perf_counter() - start
        scores, seconds = {}, {}
        for name in edges:
            t0 = time.perf_counter()
            source, destination = name.split("->")
            delta = _output(corrupted_cache, source) - _output(clean_cache, source)
            dst = parse_node(destination)
            if dst.kind in ("head", "kv_head"):  # kv_head: grouped-query k/v, indexed by key/value head
                _set_flags(model, result=False, split_qkv=True, mlp_in=False)
                hook_name = f"blocks.{dst.layer}.hook_{dst.port}_input"

                def hook(act, hook, h=dst.head, delta=delta):
                    act = act.clone()  # the per-head copies may share memory
                    act[:, :, h] += delta
                    return act
            else:
                _set_flags(model, result=False, split_qkv=False, mlp_in=dst.kind == "mlp")
                hook_name = f"blocks.{dst.layer}.hook_mlp_in" if dst.kind == "mlp" else last

                def hook(act, hook, delta=delta):
                    return act + delta
            logits = model.run_with_hooks(clean, fwd_hooks=[(hook_name, hook)])
            scores[name] = float(metric(logits)) - base
            seconds[name] = time.perf_counter() - t0
    finally:
        _set_flags(model, result=saved[0], split_qkv=saved[1], mlp_in=saved[2])
    return NaiveRun(scores, seconds, setup)
