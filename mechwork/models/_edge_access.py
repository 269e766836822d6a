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
  the MLP's own input (``mlp.hook_in``);
- the MLP input of a sequential block whose ``hook_mlp_in`` never fires but whose residual bypasses the
  pre-MLP norm (Bloom: the block adds the residual itself, ``ln2`` feeds only the MLP): ``ln2.hook_in``
  is then the MLP's own pre-norm copy, edited in place (``Access.NORM_INPUT``).

Each computed route is used only after a probe (one short forward on the booted model) shows that it
reproduces what the model computes; otherwise it is unavailable and the graph refuses the model by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from jaxtyping import Float
from torch import Tensor


class Access(Enum):
    BRIDGE = "bridge hook"  # the bridge's own edge-level hook point
    COMPUTED = "computed"  # reconstructed by mechwork from the bridge's other hooks (checked by the probe)
    NORM_INPUT = "the pre-MLP norm's input hook"  # ln2.hook_in, which reaches the MLP only (checked by the probe)
    NONE = "unavailable"


@dataclass(frozen=True)
class EdgeAccess:
    head_outputs: Access
    head_inputs: Access
    mlp_inputs: Access
    why: str = ""  # why a computed route does not apply, when the probe could not run it
    # ln1 then W_{Q,K,V} reproduces attn.hook_{q,k,v} (the probe checked): the gradient at each head's own
    # input is then the vector-Jacobian product of that projection (head_input_grads), taken layer by layer
    # in the backward, so gradient methods need no per-head input copies in the forward
    head_input_grads: bool = False


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


def head_input_grads(block, x: Tensor, grads: dict[str, Tensor]) -> Tensor:
    """The gradient at every head's own pre-norm copy of ``x`` (``[batch, pos, d_model]``, what ``ln1``
    reads), given the gradients at ``attn.hook_{port}`` (``grads``: port -> ``[batch, pos, heads of the port,
    d_head]``): the vector-Jacobian product of :func:`project_heads`, ``[batch, pos, rows, d_model]`` with the
    ports' heads one after another in ``grads``' order. Every copy is the same ``x``, so the norm's backward
    is batched over each port's heads (one norm statistic per row and port), rather than normalising one copy per
    head and port."""
    attn, x = block.attn, x.detach()
    vjp = norm_vjp(norm_module(block), x)
    rows = sum(grad.shape[2] for grad in grads.values())
    out = x.new_empty(rows, *x.shape)
    first = 0
    for port, grad in grads.items():  # port by port: one port's cotangents alive at a time, not all three
        weight = getattr(attn, f"W_{port.upper()}").detach().to(x.dtype)
        out[first : first + grad.shape[2]] = vjp(torch.einsum("bphe,hde->hbpd", grad.to(x.dtype), weight))
        first += grad.shape[2]
    return out.permute(1, 2, 0, 3)


def norm_vjp(norm, x: Float[Tensor, "*rows d"]) -> Callable[[Tensor], Tensor]:
    """Vector-Jacobian products of the norm module ``norm`` at ``x``: a function from ``n`` cotangents
    ``[n, *rows, d]`` to their ``n`` products, with the norm's forward at ``x`` computed once for all calls.
    A ``torch.nn.LayerNorm`` gets PyTorch's own LayerNorm backward once over all ``n`` (vmap would loop over
    them, having no batching rule for it); any other norm, autograd batched over the ``n`` (its operations
    batch)."""
    if type(norm) is torch.nn.LayerNorm and len(norm.normalized_shape) == 1:
        shape = list(norm.normalized_shape)
        _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, norm.weight, norm.bias, norm.eps)

        def layer_norm_products(cotangents: Tensor) -> Tensor:
            def spread(t: Tensor) -> Tensor:  # the same row statistics for every cotangent
                return t.unsqueeze(0).expand(len(cotangents), *t.shape).contiguous()

            grad, _, _ = torch.ops.aten.native_layer_norm_backward(
                cotangents.contiguous(), spread(x), shape, spread(mean), spread(rstd), norm.weight, norm.bias,
                [True, False, False])
            return grad

        return layer_norm_products
    with torch.enable_grad():
        shared = x.detach().requires_grad_(True)
        normed = norm(shared)

    def autograd_products(cotangents: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(normed, shared, cotangents, is_grads_batched=True, retain_graph=True)
        return grad

    return autograd_products


def head_writes(block, z: Tensor) -> Tensor:
    """``hook_z`` ``[batch, pos, heads, d_head]`` -> each head's write ``[batch, pos, heads, d_model]``."""
    return torch.einsum("bphe,hem->bphm", z, block.attn.W_O.to(z.dtype))


def probe_edge_access(model, *, result_hook: bool, input_hooks: bool, mlp_in_fires: bool, shares_norm: bool,
                      has_mlp: bool, parallel: bool) -> EdgeAccess:
    """Which route serves each access point, checked once per model (kept on it); run it before attaching
    hooks of your own, as ``mechwork.load`` does."""
    known = model.__dict__.get(_PROBE_KEY)
    if known is not None:
        return known
    # The bridge's per-head input copies are used only where a head fed its own residual computes what the
    # model computes from that residual (Bloom's bridge does not: there mechwork computes them instead).
    input_hooks = input_hooks and _split_inputs_faithful(model)
    # always checked (one 3-token forward): the computed head inputs also decide the gradient route
    checks, why = _run_checks(model, shares_norm and has_mlp and not mlp_in_fires)
    if result_hook and input_hooks and (mlp_in_fires or not has_mlp):
        why = ""  # every route is the bridge's own: nothing computed is missing

    def route(native: bool, check: str) -> Access:
        if native:
            return Access.BRIDGE
        return Access.COMPUTED if checks.get(check, False) else Access.NONE

    mlp = route(mlp_in_fires, "mlp") if has_mlp else Access.NONE
    if mlp is Access.NONE and has_mlp and not parallel and _norm_input_reaches_mlp_only(model):
        mlp = Access.NORM_INPUT
    access = EdgeAccess(
        head_outputs=route(result_hook, "outputs"),
        head_inputs=route(input_hooks, "inputs"),
        mlp_inputs=mlp,
        why=why,
        head_input_grads=checks.get("inputs", False),
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


def _split_inputs_faithful(model) -> bool:
    """Feed the last head's (last key/value head's) q/k/v input copy in block 0 a different residual: its
    q/k/v must equal what the plain model computes when every head reads that residual (two 3-token
    forwards, layer 0: the blocks share one implementation)."""
    device = next(model.parameters()).device
    tokens = torch.arange(3, device=device).remainder(int(model.cfg.d_vocab)).unsqueeze(0)
    d_model = int(model.cfg.d_model)
    shift = torch.linspace(-1.0, 1.0, d_model, device=device) * torch.linspace(0.5, 1.5, d_model, device=device).flip(0)
    seen: dict[str, Tensor] = {}
    keep = [(f"blocks.0.attn.hook_{p}", lambda act, hook, p=p: seen.__setitem__(p, act.detach().clone()))
            for p in _PORTS]
    cfg = model.cfg
    saved = bool(getattr(cfg, "use_split_qkv_input", False))
    try:
        model.set_use_split_qkv_input(False)
        shifted = ("blocks.0.hook_resid_pre", lambda act, hook: act + shift.to(act.dtype))
        with torch.no_grad(), model.hooks(fwd_hooks=[shifted, *keep]):
            model(tokens)
        plain = dict(seen)

        def feed_last(act: Tensor, hook) -> Tensor:
            act = act.clone()
            act[:, :, -1] = act[:, :, -1] + shift.to(act.dtype)
            return act

        model.set_use_split_qkv_input(True)
        feeds = [(f"blocks.0.hook_{p}_input", feed_last) for p in _PORTS]
        with torch.no_grad(), model.hooks(fwd_hooks=[*feeds, *keep]):
            model(tokens)
    finally:
        model.set_use_split_qkv_input(saved)
    return all(_close(seen[p][:, :, -1], plain[p][:, :, -1]) for p in _PORTS)


def _norm_input_reaches_mlp_only(model) -> bool:
    """Does an edit at every block's ``ln2.hook_in`` change its MLP's output and nothing the residual
    stream carries past the MLP (``resid_post - mlp_out == resid_mid`` in the edited run)? Two 3-token
    forwards."""
    blocks = list(model.blocks)
    hook_points = set(getattr(model, "hook_dict", {}))
    names = [f"blocks.{i}.{h}" for i in range(len(blocks))
             for h in ("hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
    if not all(f"blocks.{i}.ln2.hook_in" in hook_points for i in range(len(blocks))) or not set(names) <= hook_points:
        return False
    device = next(model.parameters()).device
    tokens = torch.arange(3, device=device).remainder(int(model.cfg.d_vocab)).unsqueeze(0)

    def run(edit: bool) -> dict[str, Tensor]:
        seen: dict[str, Tensor] = {}
        hooks = [(n, lambda act, hook, n=n: seen.__setitem__(n, act.detach().clone())) for n in names]
        if edit:
            # not a constant shift, which a LayerNorm would remove
            hooks += [(f"blocks.{i}.ln2.hook_in", lambda act, hook: act + torch.linspace(-1, 1, act.shape[-1],
                       device=act.device, dtype=act.dtype)) for i in range(len(blocks))]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            model(tokens)
        return seen

    clean, edited = run(False), run(True)
    for i in range(len(blocks)):
        base = f"blocks.{i}."
        passed_on = edited[base + "hook_resid_post"] - edited[base + "hook_mlp_out"]
        if not _close(passed_on, edited[base + "hook_resid_mid"]):
            return False
    return not _close(edited["blocks.0.hook_mlp_out"], clean["blocks.0.hook_mlp_out"])


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
