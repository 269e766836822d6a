"""Path patching: the effect of one sender node on chosen receivers, through the direct path only.

Every later component reads the residual stream, which is a sum of node outputs. Patching the path
sender -> receiver therefore adds the sender's output difference (source run minus base run) to the
receiver's own copy of its input: a head's ``hook_{q,k,v}_input`` slice, an MLP's ``hook_mlp_in``, or
the final residual for ``logits``. Every other reader still sees the base run. This is the exact edge
intervention of Wang et al. (2022), and what TransformerLens's ``get_act_patch_direct_path`` computes.
Where the sender's layer normalises its heads' summed output (Gemma 2/3, OLMo 2), the receiver instead
gets the change of that layer's normed write when only the sender's term is swapped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from .._nodes import NodeRef, parse_node
from ..metrics import as_scalar, metric_name, metric_value
from ..models._structure import BlockLayout, structure_of
from ._batched import micro_batched
from ._edge_points import edge_flags, head_input_hooks, head_output_hooks, mlp_input_hooks
from ._head_writes import head_writes_of
from ._patching import (
    Metric,
    clean_and_corrupted,
    metric_position,
    oriented_pair,
    resid_name,
    score_variants,
)
from ._result import PatchingResult
from ._runner import hooked, n_layers, run_from
from ._validation import InputError, check_tokens


def _sender_hooks(model, node: NodeRef, store: dict) -> list:
    """Hooks putting the sender's write to the residual stream (``[batch, pos, d_model]``) in ``store``."""
    def keep(act: Tensor) -> None:
        store["out"] = act if node.kind != "head" else act[:, :, node.head]
        store["layer"] = act  # a head's layer: every head's result, for a norm on their sum

    if node.kind == "input":
        return [("blocks.0.hook_resid_pre", lambda act, hook: keep(act))]
    if node.kind == "head":
        return head_output_hooks(model, node.layer, keep)
    if node.kind == "mlp":
        return [(f"blocks.{node.layer}.hook_mlp_out", lambda act, hook: keep(act))]
    raise InputError(f"{node.name} cannot be a sender: senders are 'input', heads and MLPs")


def _run_keeping(model, tokens: Tensor, send: NodeRef, resid_names: Sequence[str]) -> tuple[Tensor, dict, dict]:
    """One run: its logits, the sender's output (and its layer's, for a head) and the residual streams named."""
    store: dict[str, Tensor] = {}
    resid: dict[str, Tensor] = {}
    hooks = _sender_hooks(model, send, store)
    hooks += [(name, lambda act, hook, name=name: resid.__setitem__(name, act)) for name in resid_names]
    with edge_flags(model, outputs=True, inputs=False), hooked(model, hooks):
        logits = model(check_tokens(model, tokens))
    return logits, store, resid


def _path_delta(model, send: NodeRef, base: dict, source: dict) -> Tensor:
    """What patching the sender's path adds to a receiver's input: its source minus its base output, or,
    for a head whose layer normalises its heads' sum, the change of that layer's write when the head's
    term in the base run's sum is swapped for its source one (``hooks/_head_writes.py``)."""
    if send.kind != "head":
        return source["out"] - base["out"]
    writes = head_writes_of(model)
    summed = writes.summed(send.layer, base["layer"])
    return writes.change(send.layer, summed, base["out"] - source["out"])


def receiver_layer(model, node: NodeRef) -> int:
    return n_layers(model) if node.kind == "logits" else node.layer


def check_path(model, sender: NodeRef, receiver: NodeRef) -> None:
    structure = structure_of(model)
    for node in (sender, receiver):
        if node.layer is not None and not 0 <= node.layer < n_layers(model):
            raise InputError(f"{node.name} is outside the model's {n_layers(model)} layers")
        heads = structure.n_kv_heads if node.kind == "kv_head" else structure.n_heads
        if node.head is not None and not 0 <= node.head < heads:
            raise InputError(f"{node.name}: the model has {heads} {'key/value ' * (node.kind == 'kv_head')}heads")
    if receiver.kind == "input":
        raise InputError("'input' cannot be a receiver")
    if receiver.kind in ("head", "kv_head") and receiver.port is None:
        raise InputError(f"say which input of {receiver.name} receives: append .q, .k or .v")
    if structure.grouped_query and receiver.kind == "head" and receiver.port in ("k", "v"):
        group = receiver.head // (structure.n_heads // structure.n_kv_heads)
        raise InputError(f"{receiver.name}.{receiver.port}: under grouped-query attention keys and values are "
                         f"read once per key/value head; use blocks.{receiver.layer}.attn.kv_head.{group}."
                         f"{receiver.port}")
    if receiver.kind == "kv_head" and not structure.grouped_query:
        raise InputError(f"{receiver.name}: this model has one key/value head per query head; name the head")
    if sender.kind == "input" or receiver.kind == "logits":
        return
    same_layer_mlp = (receiver.layer == sender.layer and sender.kind == "head" and receiver.kind == "mlp"
                      and structure.layout is not BlockLayout.PARALLEL)
    if not (receiver.layer > sender.layer or same_layer_mlp):
        raise InputError(f"{receiver.name} does not read {sender.name}: a path must go forward through the model"
                         + (" (in a parallel block the MLP reads the block input, not its heads)"
                            if receiver.layer == sender.layer and structure.layout is BlockLayout.PARALLEL else ""))


def _receiver_hooks(model, receiver: NodeRef, delta: Tensor) -> list:
    """Hooks adding ``delta`` ([batch, pos, d_model]) to the receiver's own input."""
    if receiver.kind == "logits":
        return [(f"blocks.{n_layers(model) - 1}.hook_resid_post", lambda act, hook: act + delta)]
    if receiver.kind in ("head", "kv_head"):
        def add_to_head(act: Tensor) -> Tensor:
            act = act.clone()
            act[:, :, receiver.head] += delta
            return act

        return head_input_hooks(model, receiver.layer, receiver.port, add_to_head)
    return mlp_input_hooks(model, receiver.layer, lambda act: act + delta)


@micro_batched
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
    ``"blocks.1.mlp"``, ``"logits"``). ``denoise`` runs corrupted prompts and sends the clean output.
    ``batch_size``: prompts run at once (``None``: all); the value is the same (``hooks._batched``)."""
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    send = parse_node(sender)
    recvs = [parse_node(r) for r in ([receivers] if isinstance(receivers, str) else receivers)]
    if not recvs:
        raise InputError("name at least one receiver")
    for r in recvs:
        check_path(model, send, r)
    start = min(receiver_layer(model, r) for r in recvs)
    _, base_out, base = _run_keeping(model, base_tokens, send, [resid_name(model, start)])
    _, source_out, _ = _run_keeping(model, source_tokens, send, [])
    delta = _path_delta(model, send, base_out, source_out)
    resid = base[resid_name(model, start)]
    if start == n_layers(model):  # only logits receive: the final residual itself is the input
        resid, hooks = resid + delta, []
    else:
        hooks = [h for r in recvs for h in _receiver_hooks(model, r, delta)]
    with edge_flags(model, outputs=False, inputs=True):
        logits = run_from(model, resid, start, position=metric_position(metric), fwd_hooks=hooks)
    return score_variants(metric, logits, 1)[0]


@micro_batched
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
    layer run as one batch from that layer's residual stream. Under grouped-query attention keys and
    values are read once per key/value head, so for ``port`` ``k``/``v`` the head axis is the key/value
    heads (``blocks.L.attn.kv_head.G``). ``batch_size``: prompts run at once (``None``: all).
    """
    if port not in ("q", "k", "v"):
        raise InputError(f"port must be 'q', 'k' or 'v', got {port!r}")
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    send = parse_node(sender)
    structure = structure_of(model)
    n_layer = n_layers(model)
    n_recv = structure.n_kv_heads if port != "q" else structure.n_heads  # k/v: key/value heads under GQA
    first = 0 if send.kind == "input" else send.layer + 1
    values = torch.full((n_layer, n_recv), float("nan"))
    name = metric_name(metric)
    resid_hooks = [resid_name(model, layer) for layer in range(first, n_layer)]
    base_logits, base_out, base = _run_keeping(model, base_tokens, send, resid_hooks)
    source_logits, source_out, _ = _run_keeping(model, source_tokens, send, [])
    delta = _path_delta(model, send, base_out, source_out)
    onehot = torch.eye(n_recv, dtype=delta.dtype, device=delta.device)  # variant k feeds head k

    def feed(act: Tensor) -> Tensor:
        view = act.reshape(n_recv, -1, *act.shape[1:])  # [variant, batch, pos, head, d_model]
        view = view + onehot[:, None, None, :, None] * delta[None, :, :, None, :]
        return view.reshape(act.shape)

    with edge_flags(model, outputs=False, inputs=True):
        for layer in range(first, n_layer):
            resid = base[resid_name(model, layer)].repeat(n_recv, 1, 1)
            hooks = head_input_hooks(model, layer, port, feed)
            logits = run_from(model, resid, layer, position=metric_position(metric), fwd_hooks=hooks)
            values[layer] = torch.tensor(score_variants(metric, logits, n_recv))
    clean_logits, corrupted_logits = clean_and_corrupted(direction, base_logits, source_logits)
    return PatchingResult(
        values=values,
        dims=("layer", "head"),
        site=f"path {send.name} -> *.{port}",
        metric=name,
        direction=direction,
        clean_value=as_scalar(metric_value(metric, clean_logits), name),
        corrupted_value=as_scalar(metric_value(metric, corrupted_logits), name),
        method="path",
    )
