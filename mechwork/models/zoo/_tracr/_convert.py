"""A compiled tracr model as an ordinary GPT-2 checkpoint that computes the same thing.

Architecture: ``GPT2LMHeadModel`` with ReLU MLPs, learned absolute positions and a causal mask. tracr's
layers alternate attention and MLP, which is GPT-2's block; a layer tracr leaves empty becomes zero
weights. tracr's heads are padded to one key size and its MLPs to one width, and so are ours: GPT-2
ties the head width to the residual width (``d_head = d_model / n_heads``), so each head is
``d_head >= key_size`` wide and the extra columns are zero; GPT-2 divides scores by ``sqrt(d_head)``
where tracr divides by ``sqrt(key_size)``, so ``W_Q`` carries ``sqrt(d_head / key_size)``.

The residual. Dimension ``i < D`` of our residual *is* tracr's residual direction ``residual_labels[i]``
(no rotation: the checkpoint stays readable). One more dimension, the *balance*, holds minus the sum of
the other ``D``: every write (embeddings, each head's output, each MLP's output) goes through
``A = [I_D; -1^T; 0]``, so every residual vector has mean exactly zero. The rest up to
``n_heads * d_head`` is zero padding.

LayerNorm, made the identity. tracr has no LayerNorm; GPT-2 has three kinds (ln_1, ln_2, ln_f). With
``layer_norm_epsilon = 2**40`` and mean-zero residuals a LayerNorm computes
``x / sqrt(var(x) + 2**40) * gain``; in float32 ``var + 2**40`` rounds to exactly ``2**40`` while
``var < 2**15`` (its spacing there is ``2**17``), so the divisor is exactly ``2**20``, and with
``gain = 2**20`` (a power of two: dividing and multiplying by it is exact) LayerNorm returns its input
up to the float32 rounding of the mean it subtracts. Why not the hand-set models' trick (two reserved
dimensions holding a large constant, an isometry ``U``)? That makes the divisor *nearly* constant, with a
relative error ``|h|^2 / 4C^2`` that depends on the input; here the divisor does not move at all, and
the identity basis keeps tracr's labels. The bridge's LayerNorm reads the config's epsilon (checked by
the round trip: with GPT-2's default 1e-5 the outputs would be scaled per position and differ).

Tokens. The tokenizer is BOS (id 0), the program's vocabulary, then each categorical output value
whose text is not already a token. Categorical output: the unembedding row of the token for output
value ``v`` reads tracr's output direction ``(name, v)``, so the logits over the output-value tokens are
exactly tracr's unembedded output and the decoded value is their argmax (in tracr's output order, ties
to the first, as tracr's argmax). Numerical output: one extra token ``<value>`` whose logit is the
program's value; every other logit is 0, so ``logit(<value>) - logit(BOS)`` is the value itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from ..._tokenizer import word_level_tokenizer
from ._compile import CompiledProgram
from ._program import TracrProgram, TracrProgramError

LN_EPS = 2.0**40
LN_GAIN = 2.0**20
VALUE_TOKEN = "<value>"


@dataclass(frozen=True)
class TokenScheme:
    """How tokens and output values map onto the checkpoint's vocabulary."""

    vocab: tuple[str, ...]  # id -> token text; vocab[0] is BOS
    input_tokens: tuple[str, ...]  # the program's input tokens, in tokenizer order
    output_token_ids: tuple[int, ...]  # categorical: per output direction, in tracr's order; numerical: (<value>,)
    categorical: bool

    def token_id(self, text: str) -> int:
        return self.vocab.index(text)


def token_scheme(program: TracrProgram, categorical: bool, output_values: tuple) -> TokenScheme:
    """The tokenizer's vocabulary and where the outputs are read; known (and refused) once tracr has inferred
    the output's values, before the model is built (``compile_program``'s ``check_outputs``)."""
    inputs = tuple(str(v) for v in program.vocab)
    vocab = [program.bos, *inputs]
    if categorical:
        texts = [str(v) for v in output_values]
        if len(set(texts)) != len(texts):
            raise TracrProgramError(f"{program.path}: output values {list(output_values)} have the same "
                                    "text; the checkpoint names output values by their text")
        if any(not t or any(c.isspace() for c in t) for t in texts):
            raise TracrProgramError(f"{program.path}: output values must be non-empty with no whitespace as text: "
                                    f"{texts}")
        vocab += [t for t in texts if t not in vocab]
        out_ids = tuple(vocab.index(t) for t in texts)
    else:
        if VALUE_TOKEN in vocab:
            raise TracrProgramError(f"{program.path}: {VALUE_TOKEN!r} is reserved for the numerical output")
        vocab.append(VALUE_TOKEN)
        out_ids = (len(vocab) - 1,)
    if program.bos in vocab[1:]:
        raise TracrProgramError(f"{program.path}: an output value's text equals COMPILER_BOS {program.bos!r}")
    return TokenScheme(tuple(vocab), inputs, out_ids, categorical)


@dataclass(frozen=True)
class Shapes:
    d_resid: int  # tracr's residual width D
    n_heads: int
    key_size: int
    d_head: int
    d_mlp: int
    n_layers: int

    @property
    def d_model(self) -> int:
        return self.n_heads * self.d_head


def shapes_of(compiled: CompiledProgram) -> Shapes:
    cfg = compiled.assembled.model_config
    d_resid = len(compiled.residual_labels)
    d_head = max(cfg.key_size, math.ceil((d_resid + 1) / cfg.num_heads))  # +1: the balance dimension
    return Shapes(d_resid, cfg.num_heads, cfg.key_size, d_head, cfg.mlp_hidden_size, cfg.num_layers)


def gpt2_config(shapes: Shapes, vocab_size: int, n_positions: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=shapes.d_model, n_layer=shapes.n_layers,
        n_head=shapes.n_heads, n_inner=shapes.d_mlp, activation_function="relu", resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=LN_EPS, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )


class _Residual:
    """Reads and writes in tracr's residual basis, as GPT-2 weights (float64 until the end)."""

    def __init__(self, shapes: Shapes):
        self.shapes = shapes
        d, dm = shapes.d_resid, shapes.d_model
        self.write = np.zeros((dm, d))  # A: tracr residual -> ours
        self.write[:d] = np.eye(d)
        self.write[d] = -1.0

    def writes(self, rows: np.ndarray) -> np.ndarray:
        """``[n, D]`` rows written by tracr -> ``[n, d_model]`` rows written by us."""
        return rows @ self.write.T

    def reads(self, cols: np.ndarray) -> np.ndarray:
        """``[D, n]`` maps reading tracr's residual -> ``[d_model, n]`` reading ours (balance and padding unread)."""
        out = np.zeros((self.shapes.d_model, cols.shape[1]))
        out[: self.shapes.d_resid] = cols
        return out


def to_gpt2(compiled: CompiledProgram, scheme: TokenScheme) -> GPT2LMHeadModel:
    shapes = shapes_of(compiled)
    params = {module: {name: np.asarray(value, dtype=np.float64) for name, value in weights.items()}
              for module, weights in compiled.assembled.params.items()}
    res = _Residual(shapes)
    model = GPT2LMHeadModel(gpt2_config(shapes, len(scheme.vocab), compiled.program.max_seq_len + 1))
    sd: dict[str, np.ndarray] = {k: np.zeros(tuple(v.shape)) for k, v in model.state_dict().items()}
    sd["transformer.wte.weight"] = res.writes(_token_embedding(compiled, scheme, params["token_embed"]["embeddings"]))
    sd["transformer.wpe.weight"] = res.writes(params["pos_embed"]["embeddings"])
    for name in sd:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[name] = np.full(sd[name].shape, LN_GAIN)
    for layer in range(shapes.n_layers):
        _attention(sd, params, res, shapes, layer)
        _mlp(sd, params, res, layer)
    sd["lm_head.weight"] = _unembedding(compiled, scheme, res)
    _check_zero_biases(compiled, params)
    state = {k: torch.from_numpy(v).to(torch.float32) for k, v in sd.items()}
    model.load_state_dict({k: state[k].reshape(model.state_dict()[k].shape) for k in state})
    return model.eval()


def _token_embedding(compiled: CompiledProgram, scheme: TokenScheme, tracr_embed: np.ndarray) -> np.ndarray:
    """``[vocab, D]``: each token's tracr embedding (output-only tokens embed to zero; they are never input)."""
    encoding = compiled.assembled.input_encoder.encoding_map
    by_text = {str(value): index for value, index in encoding.items()}
    rows = np.zeros((len(scheme.vocab), tracr_embed.shape[1]))
    for token_id, text in enumerate(scheme.vocab):
        if token_id == 0 or text in scheme.input_tokens:
            rows[token_id] = tracr_embed[by_text[text]]
    return rows


def _attention(sd: dict, params: dict, res: _Residual, shapes: Shapes, layer: int) -> None:
    prefix, base = f"transformer.h.{layer}.attn.", f"transformer/layer_{layer}/attn/"
    ks, dh, dm = shapes.key_size, shapes.d_head, shapes.d_model
    q_scale = math.sqrt(dh / ks)  # GPT-2 divides by sqrt(d_head), tracr by sqrt(key_size)
    c_attn, c_proj = np.zeros((dm, 3 * dm)), np.zeros((dm, dm))
    for h in range(shapes.n_heads):
        cols = slice(h * ks, (h + 1) * ks)
        for i, part in enumerate(("query", "key", "value")):
            w = params[base + part]["w"][:, cols] * (q_scale if part == "query" else 1.0)
            c_attn[:, i * dm + h * dh : i * dm + h * dh + ks] = res.reads(w)
        c_proj[h * dh : h * dh + ks] = res.writes(params[base + "linear"]["w"][cols])
    sd[prefix + "c_attn.weight"], sd[prefix + "c_proj.weight"] = c_attn, c_proj


def _mlp(sd: dict, params: dict, res: _Residual, layer: int) -> None:
    prefix, base = f"transformer.h.{layer}.mlp.", f"transformer/layer_{layer}/mlp/"
    sd[prefix + "c_fc.weight"] = res.reads(params[base + "linear_1"]["w"])
    sd[prefix + "c_proj.weight"] = res.writes(params[base + "linear_2"]["w"])


def _unembedding(compiled: CompiledProgram, scheme: TokenScheme, res: _Residual) -> np.ndarray:
    labels = list(compiled.residual_labels)
    lm_head = np.zeros((len(scheme.vocab), res.shapes.d_model))
    for token_id, label in zip(scheme.output_token_ids, compiled.output_labels, strict=True):
        lm_head[token_id, labels.index(label)] = 1.0
    return lm_head


def _check_zero_biases(compiled: CompiledProgram, params: dict) -> None:
    """tracr writes no biases (constants come from its 'one' direction); a bias would be dropped here."""
    for module, weights in params.items():
        if "b" in weights and np.any(weights["b"] != 0):
            raise TracrProgramError(f"{compiled.program.path}: tracr's {module} has a nonzero bias, which this "
                                    "converter does not carry")


def tokenizer_for(scheme: TokenScheme) -> PreTrainedTokenizerFast:
    return word_level_tokenizer(list(scheme.vocab), scheme.vocab[0])
