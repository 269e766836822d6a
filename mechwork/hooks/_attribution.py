"""Attribution patching: a first-order estimate of every patch from one backward pass.

For a patch that moves activation ``a`` from the base run to the source run's ``a'``, the metric
changes by about ``(a' - a) . dm/da`` evaluated on the base run (Nanda 2023; Syed et al. 2023).
Cost: one forward on the source prompts, one forward and one backward on the base prompts. The
backward computes activation gradients only (parameters are frozen for the pass), which makes it about
as cheap as a forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..metrics import as_scalar, metric_name, metric_value
from ._batched import micro_batched
from ._cache import cache_activations
from ._patching import Metric, clean_and_corrupted, metric_position, oriented_pair, position_labels
from ._result import PatchingResult
from ._runner import embed, hook_flags, n_layers, run_from
from ._sites import Site
from ._validation import InputError


@contextlib.contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Turn off parameter gradients for the block (restored after), so backward computes only what we need."""
    params = {id(p): p for p in model.parameters()}
    original = getattr(model, "original_model", None)
    if isinstance(original, torch.nn.Module):
        params.update({id(p): p for p in original.parameters()})
    saved = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def site_hook(model, site: Site, layer: int) -> str:
    """Hook whose activation a site's attribution is taken at."""
    return site.served_by(model, layer)


def _reduce(site: Site, prod: Tensor, per_position: bool) -> Tensor:
    """Sum ``(a' - a) * grad`` over everything a variant covers; keep (pos,) head axes."""
    if site is Site.PATTERN:  # [batch, head, query, key]
        return prod.sum((0, 3)).T if per_position else prod.sum((0, 2, 3))
    if site.per_head:  # [batch, pos, head, d]
        return prod.sum((0, 3)) if per_position else prod.sum((0, 1, 3))
    return prod.sum((0, 2)) if per_position else prod.sum()  # [batch, pos, d]


@micro_batched
def attribution_patching(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "_batch _pos"],  # shape checked by check_pair, with a clear message
    metric: Metric,
    site: Site | str = Site.Z,
    *,
    per_position: bool = False,
    layers: Sequence[int] | None = None,
    direction: str = "denoise",
) -> PatchingResult:
    """Estimate :func:`activation_patching` for every layer (and head, and position) at once.

    Values are ``base metric + estimated change``, directly comparable with exact patching results.
    ``batch_size``: prompts run at once (``None``: all); the values are the same (``hooks._batched``).
    """
    site = Site.parse(site)
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    n_layer, n_head, n_pos = n_layers(model), site.n_heads(model), clean.shape[1]
    chosen = list(range(n_layer)) if layers is None else [int(x) for x in layers]
    if any(not 0 <= x < n_layer for x in chosen):
        raise InputError(f"layers {chosen} out of range [0, {n_layer})")
    hooks = [site_hook(model, site, layer) for layer in chosen]
    name = metric_name(metric)
    with hook_flags(model, attn_result=site.uses_result_hook(model), split_qkv=False, mlp_in=False):
        with torch.no_grad():
            source_logits, source = cache_activations(model, source_tokens, hooks)
        base_acts: dict[str, Tensor] = {}
        # Hooks fire under their canonical name, which may be an alias of the requested one.
        hook_dict = model.hook_dict  # rebuilt by the bridge on every access
        requested = {id(hook_dict[h]): h for h in hooks}

        def keep(act: Tensor, hook) -> Tensor:
            # Return a fresh tensor so the gradient is taken on what actually flows downstream.
            flowing = act.clone()
            flowing.retain_grad()
            base_acts[requested[id(hook)]] = flowing
            return flowing

        with frozen_parameters(model), torch.enable_grad():
            resid = embed(model, base_tokens).detach().requires_grad_(True)
            position = metric_position(metric)
            logits = run_from(model, resid, 0, position=position, fwd_hooks=[(h, keep) for h in hooks])
            value = metric_value(metric, logits)
            base_value = as_scalar(value, name)
            value.backward()
    shape = (n_layer,) + ((n_pos,) if per_position else ()) + ((n_head,) if site.per_head else ())
    values = torch.full(shape, float("nan"))
    for layer, hook in zip(chosen, hooks, strict=True):
        act = base_acts[hook]
        if act.grad is None:
            raise RuntimeError(f"no gradient reached {hook}; this site cannot be attributed on this model")
        delta = source[hook].float() - act.detach().float()  # float32 products and sums in any model dtype
        values[layer] = base_value + _reduce(site, delta * act.grad.float(), per_position)
    with torch.no_grad():
        source_value = as_scalar(metric_value(metric, source_logits), name)
    clean_value, corrupted_value = clean_and_corrupted(direction, base_value, source_value)
    dims = ("layer",) + (("pos",) if per_position else ()) + (("head",) if site.per_head else ())
    return PatchingResult(
        values=values,
        dims=dims,
        site=site.value,
        metric=name,
        direction=direction,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        method="attribution",
        position_labels=position_labels(model, clean) if per_position else None,
    )

