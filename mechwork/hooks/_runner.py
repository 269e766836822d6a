"""Resume a bridge's forward pass from the residual stream entering any block.

Exact patching at layer l only changes blocks l and up, so re-running blocks 0..l-1 is waste. The
bridge's own ``start_at_layer`` still executes the lower blocks, so we drive the blocks ourselves:
``blocks[l:]``, then ``ln_final`` and ``unembed`` (only at the metric's position when it has one).
Hook points inside the blocks fire as usual. Each model's fast path is checked once against its full
forward; a model whose blocks cannot run standalone falls back to ``start_at_layer`` (exact, slower).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

HookList = Sequence[tuple[str, Callable]]

_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def hooked(model, fwd_hooks: HookList = (), bwd_hooks: HookList = ()) -> Iterator[None]:
    """Attach hooks for the duration of the block; they are removed even if the block raises."""
    if not fwd_hooks and not bwd_hooks:
        yield
        return
    with model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
        yield


@contextlib.contextmanager
def hook_flags(model, *, attn_result: bool, split_qkv: bool, mlp_in: bool) -> Iterator[None]:
    """Temporarily set the bridge's edge-hook flags, restoring the caller's on exit."""
    cfg = model.cfg
    saved = (
        bool(getattr(cfg, "use_attn_result", False)),
        bool(getattr(cfg, "use_split_qkv_input", False)),
        bool(getattr(cfg, "use_hook_mlp_in", False)),
    )
    wanted = (attn_result, split_qkv, mlp_in)
    try:
        if wanted != saved:
            _apply_flags(model, wanted)
        yield
    finally:
        if wanted != saved:
            _apply_flags(model, saved)


def _apply_flags(model, flags: tuple[bool, bool, bool]) -> None:
    attn_result, split_qkv, mlp_in = flags
    model.set_use_attn_result(attn_result)
    if not split_qkv or not getattr(model.cfg, "use_attn_in", False):
        model.set_use_split_qkv_input(split_qkv)
    model.set_use_hook_mlp_in(mlp_in)


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def _standalone_from(model, resid: Tensor, layer: int, stop: int | None = None) -> Tensor:
    """The residual after blocks ``layer`` .. ``stop - 1`` (to the last block by default)."""
    x = resid
    for block in model.blocks[layer:stop]:
        out = block(x)
        x = out[0] if isinstance(out, tuple) else out
    return x


def _unembed(model, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
    return model.unembed(model.ln_final(x))


def _verify(model) -> bool:
    """Does driving the blocks by hand reproduce the model's own forward? Checked once per model."""
    if model in _VERIFIED:
        return _VERIFIED[model]
    ok = False
    with contextlib.suppress(Exception), torch.no_grad():
        n_ctx = int(getattr(model.cfg, "n_ctx", 4) or 4)
        tokens = torch.arange(min(4, n_ctx), device=_device(model)).unsqueeze(0) % int(model.cfg.d_vocab)
        reference = model(tokens)
        resid = model(tokens, stop_at_layer=0)
        mine = _unembed(model, _standalone_from(model, resid, 0))
        ok = torch.allclose(mine, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()) + 1e-6)
    _VERIFIED[model] = ok
    return ok


def _device(model) -> torch.device:
    return next(model.parameters()).device


def embed(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering block 0."""
    return model(tokens, stop_at_layer=0)


def run_from(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    layer: int,
    *,
    position: int | None = None,
    fwd_hooks: HookList = (),
) -> Tensor:
    """Logits from the residual stream entering block ``layer`` (``layer == n_layers``: the final residual).

    With ``position`` set, returns ``[batch, vocab]`` logits at that position only.
    """
    fast = _verify(model)  # before attaching hooks: they expect the caller's batch, not the check's
    with hooked(model, fwd_hooks):
        if fast:
            x = _standalone_from(model, resid, layer) if layer < n_layers(model) else resid
            if position is not None:
                return _unembed(model, x[:, [position]])[:, 0]
            return _unembed(model, x)
        logits = _fallback_from(model, resid, layer)
    return logits[:, position] if position is not None else logits


def run_layer_then_rest(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    layer: int,
    *,
    position: int | None,
    layer_hooks: HookList,
    flags: dict,
) -> Tensor:
    """Logits after running block ``layer`` with ``layer_hooks`` and the bridge flags in ``flags`` on, then
    the blocks above with the edge-hook flags off (they only slow a forward that does not read them).

    ``layer == n_layers`` applies the hooks' edit nowhere: pass the final residual already edited.
    """
    if not _verify(model):
        with hook_flags(model, **flags), hooked(model, layer_hooks):
            logits = _fallback_from(model, resid, layer)
        return logits[:, position] if position is not None else logits
    x = resid
    if layer < n_layers(model):
        with hook_flags(model, **flags), hooked(model, layer_hooks):
            out = model.blocks[layer](x)
        x = out[0] if isinstance(out, tuple) else out
        with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
            if layer + 1 < n_layers(model):
                x = _standalone_from(model, x, layer + 1)
    if position is not None:
        return _unembed(model, x[:, [position]])[:, 0]
    return _unembed(model, x)


def uses_fast_path(model) -> bool:
    """Whether ``run_from`` drives the blocks directly on this model (else it uses ``start_at_layer``)."""
    return _verify(model)


def _fallback_from(model, resid: Tensor, layer: int) -> Tensor:
    if layer >= n_layers(model):
        return _unembed(model, resid)
    return model(resid, start_at_layer=layer)
