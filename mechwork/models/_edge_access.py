"""Where the edge graph can read each head's output and rewrite each destination's own input.

The patch-mask engine needs three things per block: every head's write to the residual stream, a
private copy of every head's (pre-norm) q/k/v input, and the MLP's (pre-norm) input. TransformerLens's
bridge gives them as hooks (``attn.hook_result``, ``hook_{q,k,v}_input``, ``hook_mlp_in``) on most
families, but not on all: GPT-Neo, GPT-J and OPT have no per-head result or input copies, and in
parallel blocks that share one norm (GPT-J, Phi, Falcon) ``hook_mlp_in`` never reaches the MLP. There
mechwork computes them from what the bridge does give, with the model's own weights and norm module:

- head outputs: ``hook_z`` times each head's slice of ``W_O`` (the bias ``b_O`` is no head's);
- head inputs: the pre-norm residual (``ln1.hook_in``), edited per head, through ``ln1`` and the head's
  ``W_{Q,K,V}`` slice (plus bias), replacing the projection's output at ``attn.hook_{q,k,v}``;
- the MLP input of a shared-norm parallel block: ``ln1.hook_in`` edited, through ``ln1``, replacing
  the MLP's own input (``mlp.hook_in``).

Each computed route is used only after a probe (one short forward on the booted model) shows that it
reproduces what the model computes; otherwise it is unavailable and the graph refuses the model by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor


class Access(Enum):
    BRIDGE = "bridge hook"  # the bridge's own edge-level hook point
    COMPUTED = "computed"  # reconstructed by mechwork from the bridge's other hooks (checked by the probe)
    NONE = "unavailable"


@dataclass(frozen=True)
class EdgeAccess:
    head_outputs: Access
    head_inputs: Access
    mlp_inputs: Access
    why: str = ""  # why a computed route does not apply, when the probe could not run it


_PROBE_KEY = "_mechwork_edge_access"
_PORTS = ("q", "k", "v")


def norm_module(block, name: str = "ln1"):
    """The Hugging Face norm behind a bridge norm: calling it fires none of the bridge's hooks."""
    bridge_norm = getattr(block, name)
    return getattr(bridge_norm, "original_component", None) or bridge_norm


def project_heads(block, port: str, copies: Tensor) -> Tensor:
    """``[batch, pos, heads, d_model]`` pre-norm copies -> each head's own ``port`` projection
    ``[batch, pos, heads, d_head]``, as ``attn.hook_{port}`` holds it."""
    attn = block.attn
    normed = norm_module(block)(copies)
    weight = getattr(attn, f"W_{port.upper()}")  # [heads, d_model, d_head]
    out = torch.einsum("bphd,hde->bphe", normed, weight.to(normed.dtype))
    bias = getattr(attn, f"b_{port.upper()}")
    return out if bias is None else out + bias.to(out.dtype)


def head_writes(block, z: Tensor) -> Tensor:
    """``hook_z`` ``[batch, pos, heads, d_head]`` -> each head's write ``[batch, pos, heads, d_model]``."""
    return torch.einsum("bphe,hem->bphm", z, block.attn.W_O.to(z.dtype))


def probe_edge_access(model, *, result_hook: bool, input_hooks: bool, mlp_in_fires: bool, shares_norm: bool,
                      has_mlp: bool) -> EdgeAccess:
    """Which route serves each access point, checked once per model (kept on it); run it before attaching
    hooks of your own, as ``mechwork.load`` does."""
    known = model.__dict__.get(_PROBE_KEY)
    if known is not None:
        return known
    need = not (result_hook and input_hooks and (mlp_in_fires or not has_mlp))
    checks, why = _run_checks(model, shares_norm and has_mlp and not mlp_in_fires) if need else ({}, "")

    def route(native: bool, check: str) -> Access:
        if native:
            return Access.BRIDGE
        return Access.COMPUTED if checks.get(check, False) else Access.NONE

    access = EdgeAccess(
        head_outputs=route(result_hook, "outputs"),
        head_inputs=route(input_hooks, "inputs"),
        mlp_inputs=route(mlp_in_fires, "mlp") if has_mlp else Access.NONE,
        why=why,
    )
    model.__dict__[_PROBE_KEY] = access
    return access


def _run_checks(model, check_mlp: bool) -> tuple[dict[str, bool], str]:
    """One 3-token forward capturing what the computed routes rebuild, and whether each matches (with why
    none could be checked, if the bridge lacks a hook or weight they read)."""
    blocks = list(model.blocks)
    hook_points = set(getattr(model, "hook_dict", {}))
    seen: dict[str, Tensor] = {}
    wanted = []
    for layer in range(len(blocks)):
        base = f"blocks.{layer}"
        wanted += [f"{base}.ln1.hook_in", f"{base}.attn.hook_z", f"{base}.mlp.hook_in",
                   *(f"{base}.attn.hook_{p}" for p in _PORTS)]
        wanted += [n for n in (f"{base}.attn.o.hook_out", f"{base}.hook_attn_out") if n in hook_points][:1]
    hooks = [(name, lambda act, hook, name=name: seen.__setitem__(name, act.detach()))
             for name in wanted if name in hook_points]
    device = next(model.parameters()).device
    tokens = torch.arange(3, device=device).remainder(int(model.cfg.d_vocab)).unsqueeze(0)
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens)
        with torch.no_grad():
            return {"outputs": all(_outputs_match(b, seen, i) for i, b in enumerate(blocks)),
                    "inputs": all(_inputs_match(b, seen, i) for i, b in enumerate(blocks)),
                    "mlp": check_mlp and all(_mlp_matches(b, seen, i) for i, b in enumerate(blocks))}, ""
    except (AttributeError, KeyError, RuntimeError, TypeError) as exc:
        # the bridge lacks a hook or weight these routes read: they are unavailable, and the graph's
        # refusal quotes this reason
        return {}, f"mechwork could not compute them ({type(exc).__name__}: {exc})"


def _close(ours: Tensor, theirs: Tensor) -> bool:
    scale = 1.0 + float(theirs.abs().max())
    return ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= 1e-4 * scale


def _outputs_match(block, seen: dict, layer: int) -> bool:
    base = f"blocks.{layer}"
    out = seen.get(f"{base}.attn.o.hook_out", seen.get(f"{base}.hook_attn_out"))
    if out is None:
        return False
    bias = block.attn.b_O
    total = head_writes(block, seen[f"{base}.attn.hook_z"]).sum(2)
    return _close(total if bias is None else total + bias, out)


def _inputs_match(block, seen: dict, layer: int) -> bool:
    base = f"blocks.{layer}"
    x = seen[f"{base}.ln1.hook_in"]
    for port in _PORTS:
        target = seen[f"{base}.attn.hook_{port}"]
        copies = x.unsqueeze(2).expand(*x.shape[:2], target.shape[2], x.shape[-1])
        if not _close(project_heads(block, port, copies), target):
            return False
    return True


def _mlp_matches(block, seen: dict, layer: int) -> bool:
    base = f"blocks.{layer}"
    return _close(norm_module(block)(seen[f"{base}.ln1.hook_in"]), seen[f"{base}.mlp.hook_in"])
