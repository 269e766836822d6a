"""Ablations: replace chosen activations by zero, their mean over a reference set, or resampled values.

Targets are hook names, optionally with a head (``"blocks.1.attn.hook_z"`` + head 0), or node names
(``"blocks.1.attn.head.0"`` ablates that head's ``hook_z``; ``"blocks.0.mlp"`` its ``hook_mlp_out``).
:func:`compile_ablation` resolves them against the model and computes the replacement values once;
the result is a frozen plan whose hooks can be attached to any number of runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
from jaxtyping import Int
from torch import Tensor

from .._nodes import parse_node
from ._cache import cache_activations
from ._runner import hooked
from ._selectors import resolve_hook
from ._validation import InputError, check_tokens


class AblationKind(StrEnum):
    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"


@dataclass(frozen=True)
class AblationTarget:
    hook: str
    head: int | None = None  # index on the head axis (axis 2 of [batch, pos, head, d]; 1 of patterns)

    @classmethod
    def parse(cls, spec: str | AblationTarget | tuple[str, int]) -> AblationTarget:
        if isinstance(spec, AblationTarget):
            return spec
        if isinstance(spec, tuple):
            return cls(spec[0], spec[1])
        if spec.startswith("blocks.") and (".attn.head." in spec or spec.endswith(".mlp")):
            node = parse_node(spec)
            if node.kind == "head":
                return cls(f"blocks.{node.layer}.attn.hook_z", node.head)
            return cls(f"blocks.{node.layer}.hook_mlp_out")
        return cls(spec)


@dataclass(frozen=True)
class AblationPlan:
    kind: AblationKind
    targets: tuple[AblationTarget, ...]
    values: tuple[Tensor | None, ...]  # replacement per target (None for zero)

    def hooks(self, batch: int) -> list:
        return [(t.hook, _replace_fn(t, v, batch)) for t, v in zip(self.targets, self.values, strict=True)]


def _head_axis(hook: str) -> int:
    return 1 if hook.endswith("hook_pattern") else 2


def _replace_fn(target: AblationTarget, value: Tensor | None, batch: int):
    def fn(act: Tensor, hook) -> Tensor:
        replacement = torch.zeros_like(act) if value is None else value.to(act.dtype).expand_as(act)
        if target.head is None:
            return replacement.clone()
        out = act.clone()
        idx = [slice(None)] * act.ndim
        idx[_head_axis(target.hook)] = target.head
        out[tuple(idx)] = replacement[tuple(idx)]
        return out

    return fn


@torch.no_grad()
def compile_ablation(
    model,
    targets: Sequence[str | AblationTarget | tuple[str, int]],
    kind: AblationKind | str = AblationKind.ZERO,
    *,
    reference: Int[Tensor, "ref pos"] | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> AblationPlan:
    """Resolve targets and compute replacement values once.

    ``mean`` averages over the reference prompts (per position, so they must match the ablated prompts'
    length); ``resample`` draws, for each of ``batch`` prompts, a random reference prompt's activation.
    """
    kind = AblationKind(kind)
    parsed = tuple(AblationTarget.parse(t) for t in targets)
    if not parsed:
        raise InputError("name at least one ablation target")
    for t in parsed:
        resolve_hook(model, t.hook)
    if kind is AblationKind.ZERO:
        return AblationPlan(kind, parsed, (None,) * len(parsed))
    if reference is None:
        raise InputError(f"{kind.value} ablation needs reference prompts")
    reference = check_tokens(model, reference, "reference tokens")
    _, acts = cache_activations(model, reference, sorted({t.hook for t in parsed}))
    if kind is AblationKind.MEAN:
        return AblationPlan(kind, parsed, tuple(acts[t.hook].mean(0, keepdim=True) for t in parsed))
    if batch is None:
        raise InputError("resample ablation needs the batch size of the prompts it will ablate")
    g = torch.Generator().manual_seed(seed)
    draw = torch.randint(0, reference.shape[0], (batch,), generator=g)
    return AblationPlan(kind, parsed, tuple(acts[t.hook][draw] for t in parsed))


@torch.no_grad()
def run_with_ablation(model, tokens: Int[Tensor, "batch pos"], plan: AblationPlan) -> Tensor:
    """Logits of ``model`` on ``tokens`` with the plan's ablations applied."""
    tokens = check_tokens(model, tokens)
    for t, v in zip(plan.targets, plan.values, strict=True):
        if v is not None and v.shape[0] not in (1, tokens.shape[0]):
            raise InputError(f"the ablation of {t.hook} was compiled for batch {v.shape[0]}, got {tokens.shape[0]}")
        if v is not None and v.shape[1] != tokens.shape[1] and not t.hook.endswith("hook_pattern"):
            raise InputError(
                f"the ablation values of {t.hook} have {v.shape[1]} positions; the prompts have {tokens.shape[1]}"
            )
    with hooked(model, plan.hooks(tokens.shape[0])):
        return model(tokens)
