"""``load(spec)``: one path from a model reference to a TransformerLens 4.x ``TransformerBridge``.

A spec is a zoo reference (``"zoo:induction"``), a local Hugging Face checkpoint folder, or a hub
name (``"gpt2"``). All three end in ``TransformerBridge.boot_transformers`` on a local folder or a
hub name, so zoo models travel the same path as GPT-2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from ._structure import UnsupportedModelError, structure_of
from .zoo import ensure_built, get_entry

ZOO_PREFIX = "zoo:"


class ModelNotAvailableError(RuntimeError):
    """The weights for a model spec cannot be found (offline hub, wrong path)."""


def _hub_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)


def resolve_spec(spec: str | os.PathLike) -> str:
    """Turn a spec into what ``boot_transformers`` takes: a local folder or a hub name."""
    text = os.fspath(spec)
    if text.startswith(ZOO_PREFIX):
        return str(ensure_built(get_entry(text[len(ZOO_PREFIX) :])))
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"{path} exists but is not a Hugging Face checkpoint folder (no config.json); "
                "save one with model.save_pretrained(path) and tokenizer.save_pretrained(path)"
            )
        return str(path)
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/") and text.count("/") > 1:
        raise ModelNotAvailableError(f"no checkpoint folder at {path}")
    if _hub_offline() and not _hub_cached(text):
        raise ModelNotAvailableError(
            f"{text!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE). "
            f"Point mechwork.load at a local copy instead: on a machine with access run "
            f"AutoModelForCausalLM.from_pretrained({text!r}).save_pretrained(DIR) and the same for "
            f"AutoTokenizer, copy DIR here, and call mechwork.load(DIR); or use a zoo model "
            f"('mechwork zoo list')."
        )
    return text


def load(
    spec: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    edge_hooks: bool = True,
) -> TransformerBridge:
    """Load a model for analysis.

    Args:
        spec: ``"zoo:NAME"``, a local checkpoint folder, or a hub name such as ``"gpt2"``.
        device: where to put the weights.
        dtype: parameter dtype.
        edge_hooks: switch on, where this model's bridge supports them, the per-head hooks edge-level
            work reads: ``blocks.{l}.attn.hook_result`` (each head's write to the residual),
            ``blocks.{l}.hook_{q,k,v}_input`` (each head's own copy of its input) and
            ``blocks.{l}.hook_mlp_in``. Loading never requires them: a bridge without one (GPT-J, OPT
            and GPT-Neo have neither per-head results nor q/k/v input copies) loads with it off, and
            ``structure_of(model)`` records which it has (``head_result_hook``, ``head_input_hooks``,
            ``mlp_input_hook``). mechwork's methods set the flags they need around their own forward
            passes, so ``False`` only changes what plain ``model(...)`` / ``run_with_cache`` calls expose
            (and makes them cheaper).

    Returns:
        A ``TransformerBridge`` in eval mode with TransformerLens hook names (``blocks.{l}.attn.hook_z``,
        ``blocks.{l}.hook_resid_pre``, ...). Weights are the checkpoint's own (no LayerNorm folding),
        so logits match Hugging Face's.
    """
    target = resolve_spec(spec)
    try:
        bridge = TransformerBridge.boot_transformers(target, device=device, dtype=dtype)
    except OSError as exc:  # hub misses surface as OSError from transformers
        raise ModelNotAvailableError(f"could not load {os.fspath(spec)!r}: {exc}") from exc
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    try:
        structure = structure_of(bridge)  # probes hook_mlp_in once, while no hooks are attached
    except RuntimeError as exc:  # the probe is the bridge's first forward: it cannot run this checkpoint
        arch = getattr(bridge.cfg, "architecture", None) or type(bridge).__name__
        raise UnsupportedModelError(
            f"{os.fspath(spec)!r} ({arch}): TransformerLens's bridge boots it but cannot run a forward pass "
            f"on it ({exc}); e.g. OPT with do_layer_norm_before=False (OPT-350m) has no final LayerNorm, which "
            "the bridge's OPT adapter expects") from exc
    if edge_hooks:
        if structure.head_result_hook:
            bridge.set_use_attn_result(True)
        if structure.head_input_hooks:
            bridge.set_use_split_qkv_input(True)
        if structure.mlp_input_hook:
            bridge.set_use_hook_mlp_in(True)
    bridge.mechwork_spec = os.fspath(spec)
    return bridge


def weights_hash(model) -> str:
    """SHA-256 over the model's weights (names, shapes, dtypes and bytes), in a fixed order.

    Circuit files record it so a circuit is re-verified on exactly the weights it was found on.
    """
    import hashlib

    module = getattr(model, "original_model", model)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
