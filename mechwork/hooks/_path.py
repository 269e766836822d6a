"""Path patching: the effect of one sender node on chosen receivers, through the direct path only.

Every later component reads the residual stream, which is a sum of node outputs. Patching the path
sender -> receiver therefore adds the sender's output difference (source run minus base run) to the
receiver's own copy of its input: a head's ``hook_{q,k,v}_input`` slice, an MLP's ``hook_mlp_in``, or
the final residual for ``logits``. Every other reader still sees the base run. This is the exact edge
intervention of Wang et al. (2022), and what TransformerLens's ``get_act_patch_direct_path`` computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .._nodes import NodeRef, parse_node
from ..metrics import as_scalar, metric_name
from ._cache import cache_activations
from ._patching import (
    Metric,
    clean_and_corrupted,
    metric_position,
    oriented_pair,
    resid_name,
    score_variants,
)
from ._result import PatchingResult
from ._runner import hook_flags, n_layers, run_from
from ._validation import InputError


def sender_output_hook(model, node: NodeRef) -> tuple[str, int | None]:
    """Hook holding a node's write to the residual stream, and the head index within it."""
    if node.kind == "input":
        return "blocks.0.hook_resid_pre", None
    if node.kind == "head":
        return f"blocks.{node.layer}.attn.hook_result", node.head
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_out", None
    raise InputError("'logits' cannot be a sender")


def receiver_layer(model, node: NodeRef) -> int:
    return n_layers(model) if node.kind == "logits" else node.layer


def check_path(model, sender: NodeRef, receiver: NodeRef) -> None:
    for node in (sender, receiver):
        if node.layer is not None and not 0 <= node.layer < n_layers(model):
            raise InputError(f"{node.name} is outside the model's {n_layers(model)} layers")
        if node.head is not None and not 0 <= node.head < int(model.cfg.n_heads):
            raise InputError(f"{node.name}: the model has {model.cfg.n_heads} heads")
    if receiver.kind == "input":
        raise InputError("'input' cannot be a receiver")
    if receiver.kind == "head" and receiver.port is None:
        raise InputError(f"say which input of {receiver.name} receives: append .q, .k or .v")
    if sender.kind == "input" or receiver.kind == "logits":
        return
    downstream = receiver.layer > sender.layer or (
        receiver.layer == sender.layer and sender.kind == "head" and receiver.kind == "mlp"
    )
    if not downstream:
        raise InputError(f"{receiver.name} does not read {sender.name}: a path must go forward through the model")


def _receiver_hook(model, receiver: NodeRef, delta: Tensor):
    """(hook name, fn) adding ``delta`` ([batch, pos, d_model]) to the receiver's own input."""
    if receiver.kind == "logits":
        return f"blocks.{n_layers(model) - 1}.hook_resid_post", lambda act, hook: act + delta
    if receiver.kind == "head":

        def add_to_head(act: Tensor, hook) -> Tensor:
            act = act.clone()
            act[:, :, receiver.head] += delta
            return act

        return f"blocks.{receiver.layer}.hook_{receiver.port}_input", add_to_head
    return f"blocks.{receiver.layer}.hook_mlp_in", lambda act, hook: act + delta


@torch.no_grad()
def path_patching(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "_batch _pos"],  # shape checked by check_pair, with a clear message
    metric: Metric,
    sender: str,
    receivers: str | Sequence[str],
    *,
    direction: str = "denoise",
) -> float:
    """Metric after patching ``sender``'s output into ``receivers`` only (e.g. ``"blocks.1.attn.head.0.k"``,
    ``"blocks.1.mlp"``, ``"logits"``). ``denoise`` runs corrupted prompts and sends the clean output."""
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    send = parse_node(sender)
    recvs = [parse_node(r) for r in ([receivers] if isinstance(receivers, str) else receivers)]
    if not recvs:
        raise InputError("name at least one receiver")
    for r in recvs:
        check_path(model, send, r)
    out_hook, head = sender_output_hook(model, send)
    start = min(receiver_layer(model, r) for r in recvs)
    with hook_flags(model, attn_result=True, split_qkv=True, mlp_in=True):
        _, base = cache_activations(model, base_tokens, sorted({out_hook, resid_name(model, start)}))
        _, source = cache_activations(model, source_tokens, [out_hook])
        delta = source[out_hook] - base[out_hook]
        delta = delta[:, :, head] if head is not None else delta
        resid = base[resid_name(model, start)]
        if start == n_layers(model):  # only logits receive: the final residual itself is the input
            resid, hooks = resid + delta, []
        else:
            hooks = [_receiver_hook(model, r, delta) for r in recvs]
        logits = run_from(model, resid, start, position=metric_position(metric), fwd_hooks=hooks)
    return score_variants(metric, logits, 1)[0]


@torch.no_grad()
def path_patching_sweep(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "_batch _pos"],  # shape checked by check_pair, with a clear message
    metric: Metric,
    sender: str,
    port: str = "q",
    *,
    direction: str = "denoise",
) -> PatchingResult:
    """Path-patch ``sender`` into the ``port`` input of every later head, one head at a time.

    Returns dims ``(layer, head)``; heads that cannot receive from the sender are NaN. All heads of a
    layer run as one batch from that layer's residual stream.
    """
    if port not in ("q", "k", "v"):
        raise InputError(f"port must be 'q', 'k' or 'v', got {port!r}")
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    send = parse_node(sender)
    n_layer, n_head = n_layers(model), int(model.cfg.n_heads)
    out_hook, head = sender_output_hook(model, send)
    first = 0 if send.kind == "input" else send.layer + 1
    values = torch.full((n_layer, n_head), float("nan"))
    name = metric_name(metric)
    with hook_flags(model, attn_result=True, split_qkv=True, mlp_in=True):
        resid_hooks = [resid_name(model, layer) for layer in range(first, n_layer)]
        base_logits, base = cache_activations(model, base_tokens, sorted({out_hook, *resid_hooks}))
        source_logits, source = cache_activations(model, source_tokens, [out_hook])
        delta = source[out_hook] - base[out_hook]
        delta = delta[:, :, head] if head is not None else delta
        for layer in range(first, n_layer):
            resid = base[resid_name(model, layer)].repeat(n_head, 1, 1)
            onehot = torch.eye(n_head, dtype=delta.dtype, device=delta.device)  # variant k feeds head k

            def feed(act: Tensor, hook, onehot=onehot) -> Tensor:
                view = act.reshape(n_head, -1, *act.shape[1:])  # [variant, batch, pos, head, d_model]
                view = view + onehot[:, None, None, :, None] * delta[None, :, :, None, :]
                return view.reshape(act.shape)

            hooks = [(f"blocks.{layer}.hook_{port}_input", feed)]
            logits = run_from(model, resid, layer, position=metric_position(metric), fwd_hooks=hooks)
            values[layer] = torch.tensor(score_variants(metric, logits, n_head))
    clean_logits, corrupted_logits = clean_and_corrupted(direction, base_logits, source_logits)
    return PatchingResult(
        values=values,
        dims=("layer", "head"),
        site=f"path {send.name} -> *.{port}",
        metric=name,
        direction=direction,
        clean_value=as_scalar(metric(clean_logits), name),
        corrupted_value=as_scalar(metric(corrupted_logits), name),
        method="path",
    )
