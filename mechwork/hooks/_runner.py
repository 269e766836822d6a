"""Resume a bridge's forward pass from the residual stream entering any block.

Exact patching at layer l only changes blocks l and up, so re-running blocks 0..l-1 is waste. The
bridge's own ``start_at_layer`` still executes the lower blocks, so we drive the blocks ourselves:
``blocks[l:]``, then ``ln_final`` and ``unembed`` (only at the metric's position when it has one).
Hook points inside the blocks fire as usual. Whether a model's blocks can be driven by hand is a
declared property of its structure (``models.structure_of(model).resumable_blocks``, backed by a test
per family); a model whose blocks cannot uses ``start_at_layer`` (exact, slower) and says so once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..models import structure_of, warn_slow_path

HookList = Sequence[tuple[str, Callable]]


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


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def hooks_from(fwd_hooks: HookList, layer: int) -> HookList:
    """The hooks a run resumed at block ``layer`` may fire: none on a block below it.

    The bridge's ``start_at_layer`` still runs blocks ``0 .. layer-1`` (on the injected residual taken as
    input embeddings) and then discards what they computed; a hook there would see those throwaway
    values (and an engine recording node outputs would keep them), so resuming drops it, as a true resume
    never runs those blocks at all.
    """
    if layer <= 0:
        return fwd_hooks
    return [(name, fn) for name, fn in fwd_hooks
            if not isinstance(name, str) or (m := _BLOCK.match(name)) is None or int(m.group(1)) >= layer]


def resumed_hooks(model, resid: Tensor, layer: int, fwd_hooks: HookList) -> HookList:
    """The hooks for a run resumed at block ``layer`` through the bridge's ``start_at_layer``: those of
    :func:`hooks_from`, after one that puts ``resid`` at the block's input where the bridge itself does not
    (``ModelStructure.start_at_layer_exact``: Bloom's block bridge never swaps the residual in, so every
    block would run on ``resid`` taken as input embeddings)."""
    kept = list(hooks_from(fwd_hooks, layer))
    if layer >= n_layers(model) or structure_of(model).start_at_layer_exact:
        return kept
    return [(f"blocks.{layer}.hook_resid_pre", lambda act, hook: resid), *kept]


def _unembed(model, x: Float[Tensor, "batch pos d_model"]) -> Tensor:
    """The final norm and the unembedding, then the final logit softcap where the model has one (Hugging
    Face applies it after ``lm_head``; the bridge's ``unembed`` does not)."""
    return softcapped(model, model.unembed(model.ln_final(x)))


def softcapped(model, logits: Tensor) -> Tensor:
    """``logits`` with the model's final logit softcap applied, where it has one (Gemma 2)."""
    cap = structure_of(model).final_logit_softcap
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _resumable(model) -> bool:
    """Drive the blocks by hand? Declared by the model's structure; a model where not says so once."""
    structure = structure_of(model)
    if not structure.resumable_blocks:
        warn_slow_path(model, "resuming the forward pass at a block",
                       f"mechwork has not verified that {structure.architecture}'s blocks run standalone; "
                       "using the bridge's start_at_layer, which reruns the blocks below (exact, slower)")
    return structure.resumable_blocks


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

    With ``position`` set, returns ``[batch, vocab]`` logits at that position only: the final norm and the
    unembedding run there alone (their hooks see ``[batch, 1, d_model]``), on every family.
    """
    fast = _resumable(model)
    if not fast and position is not None and layer < n_layers(model):
        return _fallback_at_position(model, resid, layer, position, fwd_hooks)
    with hooked(model, fwd_hooks if fast else resumed_hooks(model, resid, layer, fwd_hooks)):
        if fast:
            x = _standalone_from(model, resid, layer) if layer < n_layers(model) else resid
            if position is not None:
                return _unembed(model, x[:, [position]])[:, 0]
            return _unembed(model, x)
        logits = _fallback_from(model, resid, layer)
    return logits[:, position] if position is not None else logits


class _FinalResidual(Exception):  # noqa: N818 - control flow, not an error: carries the final residual out
    def __init__(self, residual: Tensor):
        super().__init__("the final residual")
        self.residual = residual


def _stop_at_final_residual(model) -> HookList:
    """A hook, to go after every other, that ends the bridge's forward at the last block's output, so a
    run read at one position skips the unembedding of every other (vocab x d_model per token: 40% of a
    Llama-shaped forward at 32k vocabulary and 32 tokens)."""
    def stop(act: Tensor, hook) -> None:
        raise _FinalResidual(act)

    return [(f"blocks.{n_layers(model) - 1}.hook_resid_post", stop)]


def _fallback_at_position(model, resid: Tensor, layer: int, position: int, fwd_hooks: HookList) -> Tensor:
    """``[batch, vocab]`` logits at ``position`` from the bridge's ``start_at_layer`` run, ended at the final
    residual by :func:`_stop_at_final_residual` after ``fwd_hooks`` have run, then unembedded there alone
    (hooks on the final norm and the unembedding see that one position, as on the resumable path)."""
    with hooked(model, [*resumed_hooks(model, resid, layer, fwd_hooks), *_stop_at_final_residual(model)]):
        try:
            model(resid, start_at_layer=layer)
        except _FinalResidual as reached:
            return _unembed(model, reached.residual[:, [position]])[:, 0]
    raise RuntimeError(f"the forward never reached blocks.{n_layers(model) - 1}.hook_resid_post")


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
    if layer < n_layers(model) and not _resumable(model):
        if position is not None:
            with hook_flags(model, **flags):
                return _fallback_at_position(model, resid, layer, position, layer_hooks)
        with hook_flags(model, **flags), hooked(model, resumed_hooks(model, resid, layer, layer_hooks)):
            return _fallback_from(model, resid, layer)
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
    return structure_of(model).resumable_blocks


def _fallback_from(model, resid: Tensor, layer: int) -> Tensor:
    if layer >= n_layers(model):
        return _unembed(model, resid)
    return model(resid, start_at_layer=layer)
