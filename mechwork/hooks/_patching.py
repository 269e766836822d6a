"""Exact activation patching, compiled into a plan and run with the clean computation reused.

A :class:`PatchSpec` says what to sweep; :func:`compile_plan` checks it against the model once and
produces a :class:`PatchPlan` of per-layer jobs, each a stack of boolean masks (one per variant).
Execution runs every variant of a layer as one batch, from the residual stream entering that layer
(blocks below it are never re-run) and computes the unembedding only at the metric's position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from ..metrics import PositionMetric, as_scalar, metric_name, metric_value
from ._batched import micro_batched
from ._cache import cache_activations
from ._result import PatchingResult
from ._runner import hook_flags, n_layers, run_from
from ._sites import Site, Variant
from ._validation import InputError, check_pair

Metric = Callable[[Tensor], Tensor]
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class PatchSpec:
    """What to sweep: a site, per position or all positions at once, optionally restricted."""

    site: Site | str
    per_position: bool = False
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class LayerJob:
    layer: int
    hook: str | None  # None: patch the residual stream entering ``start_layer`` directly
    source: str  # hook name whose source-run value is patched in
    start_layer: int
    masks: Tensor  # [variants, *site.mask_shape]
    index: Tensor  # [variants, len(dims)] coordinates in the result


@dataclass(frozen=True)
class PatchPlan:
    site: Site
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    jobs: tuple[LayerJob, ...]

    @property
    def n_variants(self) -> int:
        return sum(len(j.masks) for j in self.jobs)


def _checked_range(name: str, chosen: Sequence[int] | None, size: int) -> tuple[int, ...]:
    if chosen is None:
        return tuple(range(size))
    values = tuple(int(c) for c in chosen)
    bad = [c for c in values if not 0 <= c < size]
    if bad:
        raise InputError(f"{name} {bad} out of range [0, {size})")
    return values


def compile_plan(model, spec: PatchSpec, n_pos: int) -> PatchPlan:
    site = Site.parse(spec.site)
    n_layer, n_head = n_layers(model), site.n_heads(model)
    layers = _checked_range("layers", spec.layers, n_layer)
    heads = _checked_range("heads", spec.heads, n_head) if site.per_head else (None,)
    positions = _checked_range("positions", spec.positions, n_pos) if spec.per_position else (None,)
    dims = ("layer",) + (("pos",) if spec.per_position else ()) + (("head",) if site.per_head else ())
    shape = (n_layer,) + ((n_pos,) if spec.per_position else ()) + ((n_head,) if site.per_head else ())
    jobs = []
    for layer in layers:
        variants = [Variant(layer, h, p) for p in positions for h in heads]
        masks = torch.stack([site.variant_mask(n_pos, n_head, v.head, v.pos) for v in variants])
        index = torch.tensor([_coords(v, spec.per_position, site.per_head) for v in variants])
        hook, start = _hook_and_start(model, site, layer)
        jobs.append(LayerJob(layer, hook, site.served_by(model, layer), start, masks, index))
    return PatchPlan(site, dims, shape, tuple(jobs))


def _coords(v: Variant, per_position: bool, per_head: bool) -> list[int]:
    return [v.layer] + ([v.pos] if per_position else []) + ([v.head] if per_head else [])


def _hook_and_start(model, site: Site, layer: int) -> tuple[str | None, int]:
    if site is Site.RESID_MID:
        # The bridge's hook_resid_mid is LayerNorm 2's input: patching it changes what the MLP reads but
        # not the residual stream. Setting attn_out to (target mid - resid_pre) patches the stream itself.
        return f"blocks.{layer}.hook_attn_out", layer
    if site is Site.RESID_PRE:
        return None, layer
    if site is Site.RESID_POST:
        return None, layer + 1
    return site.served_by(model, layer), layer


def resid_name(model, layer: int) -> str:
    """Hook name of the residual stream entering ``layer`` (``n_layers``: the final residual)."""
    last = n_layers(model)
    return f"blocks.{layer}.hook_resid_pre" if layer < last else f"blocks.{last - 1}.hook_resid_post"


def _patched(act: Tensor, source: Tensor, masks: Tensor) -> Tensor:
    """``act`` is ``[variants * batch, ...]``; variant k takes ``source`` where ``masks[k]`` is set."""
    k = masks.shape[0]
    view = act.reshape(k, -1, *act.shape[1:])
    return torch.where(masks.unsqueeze(1), source.unsqueeze(0), view).reshape(act.shape)


def score_variants(metric: Metric, logits: Tensor, n_variants: int) -> list[float]:
    """Metric of each variant's slice of a batched run (logits ``[variants * batch, ...]``)."""
    name = metric_name(metric)
    chunks = logits.reshape(n_variants, -1, *logits.shape[1:])
    return [as_scalar(metric_value(metric, c), name) for c in chunks]


def metric_position(metric: Metric) -> int | None:
    return metric.position if isinstance(metric, PositionMetric) else None


def execute_plan(
    model,
    plan: PatchPlan,
    base_acts: dict[str, Tensor],
    source_acts: dict[str, Tensor],
    metric: Metric,
    *,
    max_batch: int = 256,
    progress: bool = False,
) -> Tensor:
    values = torch.full(plan.shape, float("nan"))
    position = metric_position(metric)
    for job in tqdm(plan.jobs, disable=not progress, desc=f"patching {plan.site.value}"):
        base = base_acts[resid_name(model, job.start_layer)]
        source = source_acts[job.source]
        if plan.site is Site.RESID_MID:
            source = source - base  # the attn_out that makes resid_mid equal the source's
        per_chunk = max(1, max_batch // base.shape[0])
        for start in range(0, len(job.masks), per_chunk):
            masks = job.masks[start : start + per_chunk].to(base.device)
            resid = base.repeat(len(masks), 1, 1)
            hooks = []
            if job.hook is None:
                resid = _patched(resid, source, masks)
            else:
                hooks = [(job.hook, lambda act, hook, s=source, m=masks: _patched(act, s, m))]
            logits = run_from(model, resid, job.start_layer, position=position, fwd_hooks=hooks)
            scores = score_variants(metric, logits, len(masks))
            for row, value in zip(job.index[start : start + per_chunk], scores, strict=True):
                values[tuple(row.tolist())] = value
    return values


def position_labels(model, tokens: Tensor) -> tuple[str, ...]:
    """Token strings of the first prompt, for labelling position axes."""
    tok = getattr(model, "tokenizer", None)
    ids = tokens[0].tolist()
    if tok is None:
        return tuple(f"pos {i}" for i in range(len(ids)))
    return tuple(f"{i}: {tok.convert_ids_to_tokens(t)}" for i, t in enumerate(ids))


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def oriented_pair(model, clean: Tensor, corrupted: Tensor, direction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check the prompts and the direction; return ``(clean, corrupted, base, source)``: ``denoise`` runs
    the corrupted prompts (base) with activations from the clean ones (source), ``noise`` the reverse."""
    check_direction(direction)
    clean, corrupted = check_pair(model, clean, corrupted)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return clean, corrupted, base, source


def clean_and_corrupted(direction: str, base, source) -> tuple:
    """Undo :func:`oriented_pair`'s orientation for anything computed on base and source runs."""
    return (source, base) if direction == "denoise" else (base, source)


@micro_batched
@torch.no_grad()
def activation_patching(
    model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "_batch _pos"],  # shape checked by check_pair, with a clear message
    metric: Metric,
    site: Site | str = Site.Z,
    *,
    per_position: bool = False,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "denoise",
    max_batch: int = 256,
    progress: bool = False,
) -> PatchingResult:
    """Patch ``site`` activations from one run into the other, one variant at a time, and score each.

    ``direction="denoise"`` (TransformerLens's convention) runs the corrupted prompts and patches in
    clean activations; ``"noise"`` runs the clean prompts and patches in corrupted ones.
    The result has dims ``(layer[, pos][, head])``. ``batch_size``: prompts run at once (``None``: all);
    the result is the same (``hooks._batched``).
    """
    clean, corrupted, base_tokens, source_tokens = oriented_pair(model, clean, corrupted, direction)
    spec = PatchSpec(
        site=site,
        per_position=per_position,
        layers=tuple(layers) if layers is not None else None,
        heads=tuple(heads) if heads is not None else None,
        positions=tuple(positions) if positions is not None else None,
    )
    plan = compile_plan(model, spec, clean.shape[1])
    resid_hooks = sorted({resid_name(model, j.start_layer) for j in plan.jobs})
    source_hooks = sorted({j.source for j in plan.jobs})
    with hook_flags(model, attn_result=plan.site.uses_result_hook(model), split_qkv=False, mlp_in=False):
        base_logits, base_acts = cache_activations(model, base_tokens, resid_hooks)
        source_logits, source_acts = cache_activations(model, source_tokens, source_hooks)
        values = execute_plan(model, plan, base_acts, source_acts, metric, max_batch=max_batch, progress=progress)
    name = metric_name(metric)
    clean_logits, corrupted_logits = clean_and_corrupted(direction, base_logits, source_logits)
    return PatchingResult(
        values=values,
        dims=plan.dims,
        site=plan.site.value,
        metric=name,
        direction=direction,
        clean_value=as_scalar(metric_value(metric, clean_logits), name),
        corrupted_value=as_scalar(metric_value(metric, corrupted_logits), name),
        position_labels=position_labels(model, clean) if per_position else None,
    )
