"""Tiny random-weight checkpoints, one per model family TransformerLens's bridge boots.

Each family is a Hugging Face config small enough to build in a test (2 layers, d_model 32, 4 query
heads, vocabulary 40) yet shaped like the family's real models: grouped-query attention where the
family uses it, parallel blocks, ALiBi, sliding windows shorter than a test prompt, softcapping,
QK norms, mixture-of-experts MLPs. :func:`build_checkpoint` saves one, with a word-level tokenizer,
as a local folder that ``mechwork.load`` and ``AutoModelForCausalLM.from_pretrained`` both read.

Weights are drawn at a scale where layers matter (``N(0, 1/fan_in)``, every 1-D parameter -- norm
gains, biases -- perturbed), so a wrong norm, position scheme or block wiring changes the logits
well beyond test tolerances. The tests (``tests/families.py``) and ``mechwork architectures`` share
these builders.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

VOCAB = 40
_SMALL = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}


@dataclass(frozen=True)
class Family:
    """A model family: its ``model_type`` name, its Hugging Face class and a tiny config for it."""

    name: str
    architecture: str  # the Hugging Face class name, as the bridge's config reports it
    make_config: Callable[[], object]
    note: str  # what the tiny config keeps of the family's real models

    def config(self):
        return self.make_config()


def _cfg(class_name: str, **kwargs) -> Callable[[], object]:
    def make():
        import transformers

        return getattr(transformers, class_name)(**{**_SMALL, **kwargs})

    return make


_LLAMA_LIKE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
               "max_position_embeddings": 32}
_TWO_LAYER_TYPES = ["sliding_attention", "full_attention"]

FAMILIES: tuple[Family, ...] = (
    Family("gpt2", "GPT2LMHeadModel",
           _cfg("GPT2Config", n_positions=32, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=False),
           "learned positions, pre-LayerNorm, dense GELU MLP"),
    Family("gpt_neo", "GPTNeoForCausalLM",
           _cfg("GPTNeoConfig", max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
                intermediate_size=64, attention_types=[[["global", "local"], 1]], window_size=4),
           "alternating global / local (window 4) attention, no attention scaling"),
    Family("gptj", "GPTJForCausalLM",
           _cfg("GPTJConfig", n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
           "parallel attention + MLP sharing one LayerNorm, partial rotary (interleaved)"),
    Family("gpt_neox", "GPTNeoXForCausalLM",
           _cfg("GPTNeoXConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=32, use_parallel_residual=True, tie_word_embeddings=False),
           "Pythia: parallel attention + MLP with two LayerNorms, partial rotary (25 %)"),
    Family("opt", "OPTForCausalLM",
           _cfg("OPTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                max_position_embeddings=32, word_embed_proj_dim=32, do_layer_norm_before=True),
           "learned positions with OPT's offset of 2, ReLU MLP"),
    Family("bloom", "BloomForCausalLM",
           _cfg("BloomConfig", hidden_size=32, n_layer=2, n_head=4),
           "ALiBi, LayerNorm on the embeddings"),
    Family("llama", "LlamaForCausalLM",
           _cfg("LlamaConfig", **_LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=False),
           "grouped-query attention (4 query / 2 key-value heads), RMSNorm, SwiGLU, rotary"),
    Family("mistral", "MistralForCausalLM",
           _cfg("MistralConfig", **_LLAMA_LIKE, num_key_value_heads=2, head_dim=8, sliding_window=4),
           "grouped-query attention, sliding window 4"),
    Family("qwen2", "Qwen2ForCausalLM",
           _cfg("Qwen2Config", **_LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=False),
           "grouped-query attention with q/k/v biases"),
    Family("qwen3", "Qwen3ForCausalLM",
           _cfg("Qwen3Config", **_LLAMA_LIKE, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False),
           "grouped-query attention with per-head RMSNorm on q and k"),
    Family("gemma", "GemmaForCausalLM",
           _cfg("GemmaConfig", **_LLAMA_LIKE, num_key_value_heads=1, head_dim=8),
           "multi-query attention (1 key-value head), (1 + w) RMSNorm, GeGLU, embeddings scaled by sqrt(d_model)"),
    Family("gemma2", "Gemma2ForCausalLM",
           _cfg("Gemma2Config", **_LLAMA_LIKE, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                sliding_window=4, layer_types=_TWO_LAYER_TYPES),
           "grouped-query attention, pre- and post-norms, attention and final logit softcapping, sliding window 4"),
    Family("gemma3", "Gemma3ForCausalLM",
           _cfg("Gemma3TextConfig", **_LLAMA_LIKE, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                sliding_window=4, layer_types=_TWO_LAYER_TYPES),
           "text-only Gemma 3: grouped-query attention, QK norms, pre- and post-norms, local/global rotary bases"),
    Family("phi", "PhiForCausalLM",
           _cfg("PhiConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=32),
           "parallel attention + MLP sharing one LayerNorm, partial rotary (50 %)"),
    Family("phi3", "Phi3ForCausalLM",
           _cfg("Phi3Config", **_LLAMA_LIKE, num_key_value_heads=4),
           "fused qkv and gate_up projections, RMSNorm, SwiGLU"),
    Family("olmo2", "Olmo2ForCausalLM",
           _cfg("Olmo2Config", **_LLAMA_LIKE, num_key_value_heads=4),
           "norms after attention and MLP (none before), QK RMSNorm"),
    Family("mixtral", "MixtralForCausalLM",
           _cfg("MixtralConfig", **_LLAMA_LIKE, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
           "mixture of 4 SwiGLU experts (top 2), grouped-query attention"),
    Family("falcon", "FalconForCausalLM",
           _cfg("FalconConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                parallel_attn=True, new_decoder_architecture=False, alibi=False, max_position_embeddings=32),
           "Falcon-7B layout: parallel attention + MLP sharing one LayerNorm, multi-query attention, rotary"),
)

_BY_NAME = {f.name: f for f in FAMILIES}


def family_names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get_family(name: str) -> Family:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no tiny family {name!r}; known: {', '.join(_BY_NAME)}") from None


def build_model(name: str, *, seed: int = 0):
    """The family's tiny Hugging Face model with seeded random weights at a scale where every layer matters."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(get_family(name).config())
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
            else:  # norm gains (or Gemma's offsets from 1) and biases, so none is the identity
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def build_checkpoint(name: str, folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Save the family's tiny model and a word-level tokenizer (``w0`` .. ``w39``) into ``folder``."""
    from ._tokenizer import word_level_tokenizer

    folder = Path(folder)
    build_model(name, seed=seed).save_pretrained(folder)
    word_level_tokenizer([f"w{i}" for i in range(VOCAB)], "w0").save_pretrained(folder)
    return folder
