"""Tiny random-weight checkpoints of every model family, for tests: the package's own builders
(``mechwork.models._families``, which ``mechwork architectures`` also uses), built once per test session
into a temporary folder and loaded once.

What each family is expected to look like is written here from its Hugging Face config (and the
family's published architecture), never read from the bridge: the tests compare mechwork's structure
description with these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import mechwork
from mechwork.models import BlockLayout, MLPKind, NormKind, PositionKind
from mechwork.models._families import FAMILIES, build_checkpoint, family_names, get_family

__all__ = ["BRIDGE_LACKS", "BRIDGE_UNFAITHFUL", "EXPECTED", "FAMILIES", "Expected", "Tiny", "family_names",
           "get_family", "prompts", "tiny_family"]

SEQ, PAR = BlockLayout.SEQUENTIAL, BlockLayout.PARALLEL
LN, RMS = NormKind.LAYERNORM, NormKind.RMSNORM
DENSE, GATED, MOE = MLPKind.DENSE, MLPKind.GATED, MLPKind.MIXTURE_OF_EXPERTS
ABS, ROT, ALIBI = PositionKind.ABSOLUTE, PositionKind.ROTARY, PositionKind.ALIBI


@dataclass(frozen=True)
class Expected:
    layout: BlockLayout
    norm: NormKind
    mlp: MLPKind
    positions: PositionKind
    n_kv_heads: int
    attn_out_norm: bool = False  # Gemma 2/3 and OLMo 2 normalise the attention output before the residual add


# From the configs in mechwork/models/_families.py and each family's modelling code in transformers:
# GPT-J, Phi and Falcon (parallel_attn) run attention and MLP off one LayerNorm; GPT-NeoX with
# use_parallel_residual off two; OPT and GPT-Neo learn absolute positions; Bloom uses ALiBi; Falcon
# with multi_query has one key/value head; Gemma's tiny config has num_key_value_heads=1.
EXPECTED: dict[str, Expected] = {
    "gpt2": Expected(SEQ, LN, DENSE, ABS, 4),
    "gpt_neo": Expected(SEQ, LN, DENSE, ABS, 4),
    "gptj": Expected(PAR, LN, DENSE, ROT, 4),
    "gpt_neox": Expected(PAR, LN, DENSE, ROT, 4),
    "opt": Expected(SEQ, LN, DENSE, ABS, 4),
    "bloom": Expected(SEQ, LN, DENSE, ALIBI, 4),
    "llama": Expected(SEQ, RMS, GATED, ROT, 2),
    "mistral": Expected(SEQ, RMS, GATED, ROT, 2),
    "qwen2": Expected(SEQ, RMS, GATED, ROT, 2),
    "qwen3": Expected(SEQ, RMS, GATED, ROT, 2),
    "gemma": Expected(SEQ, RMS, GATED, ROT, 1),
    "gemma2": Expected(SEQ, RMS, GATED, ROT, 2, attn_out_norm=True),
    "gemma3": Expected(SEQ, RMS, GATED, ROT, 2, attn_out_norm=True),
    "phi": Expected(PAR, LN, DENSE, ROT, 4),
    "phi3": Expected(SEQ, RMS, GATED, ROT, 4),
    "olmo2": Expected(SEQ, RMS, GATED, ROT, 4, attn_out_norm=True),
    "mixtral": Expected(SEQ, RMS, MOE, ROT, 2),
    "falcon": Expected(PAR, LN, DENSE, ROT, 1),
}


@dataclass(frozen=True)
class Tiny:
    name: str
    folder: Path
    model: object  # the booted TransformerBridge


_BUILT: dict[str, Tiny] = {}


def tiny_family(name: str, root: Path) -> Tiny:
    """The family's tiny checkpoint under ``root`` and the bridge loaded from it (built once per session)."""
    if name not in _BUILT:
        folder = build_checkpoint(name, root / name)
        _BUILT[name] = Tiny(name, folder, mechwork.load(folder))
    return _BUILT[name]


def prompts(batch: int = 2, pos: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A clean and a corrupted batch of random tokens (batch 2 x 6 tokens by default)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (batch, pos), generator=g), torch.randint(0, 40, (batch, pos), generator=g)


# What TransformerLens 4.3's bridge cannot give for a family (read from its adapters, checked by
# test_families.py against the bridge's own setters and against a brute-force hook edit):
# "result" -- no per-head attn.hook_result; "qkv" -- no per-head hook_{q,k,v}_input (both: the plain
# AttentionBridge, which delegates attention to Hugging Face); "mlp_in" -- hook_mlp_in never reaches the
# MLP (wired as a pre-hook on ln2: shared-norm parallel blocks have no ln2, and BloomBlockBridge's
# forward never installs it).
# What the bridge gives but computes wrongly (found by mechwork's load-time probe, and checked here
# against the plain model in test_families.py): Bloom's per-head q/k/v input copies -- a head fed its own
# residual does not compute what the model computes from it -- so mechwork computes them instead.
BRIDGE_UNFAITHFUL: dict[str, frozenset[str]] = {"bloom": frozenset({"qkv"})}

BRIDGE_LACKS: dict[str, frozenset[str]] = {
    "gpt_neo": frozenset({"result", "qkv"}),
    "gptj": frozenset({"result", "qkv", "mlp_in"}),
    "opt": frozenset({"result", "qkv"}),
    "bloom": frozenset({"mlp_in"}),
    "phi": frozenset({"mlp_in"}),
    "falcon": frozenset({"mlp_in"}),
}


def boot_perturbed(model, folder: Path, perturb) -> object:
    """Add 0.1 x noise to the parameters ``perturb(name)`` picks (so biases and norms are not their trivial
    init and nothing cancels by accident), save with the w0 .. w39 tokenizer, and boot it with mechwork."""
    from mechwork.models._tokenizer import word_level_tokenizer

    with torch.no_grad():
        for name, p in model.named_parameters():
            if perturb(name):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    word_level_tokenizer([f"w{i}" for i in range(40)], "w0").save_pretrained(folder)
    return mechwork.load(folder)
