"""Hand-set Llama weights: RMSNorm, rotary positions, grouped-query attention, gated MLP.

The residual trick is GPT-2's (:class:`ResidualLayout`): two reserved dimensions carry +C and -C, every
feature lives orthogonal to them and to the all-ones vector, so the residual's mean is exactly zero and
RMSNorm divides by the same near-constant LayerNorm would; its gain cancels it. Llama has no positional
embedding, so the constant rides on every token's embedding.

Positions exist only inside attention scores, through rotary embeddings. Hugging Face's Llama rotates
coordinate pair ``(i, i + d_head/2)`` by ``p * theta_i`` at position ``p``, with ``theta_i =
rope_theta ** (-2 i / d_head)``. A query pair ``A e^{-i offset theta_i}`` against a key pair ``1``
scores ``A cos(theta_i (q_pos - k_pos - offset))``: summed over the fast pairs that peaks sharply at
``k_pos = q_pos - offset`` (a previous-token head for offset 1). Content matching uses only the slow
pairs, whose rotation over the whole context stays below :data:`SLOW_ANGLE`, so there a score is a
plain dot product to within ``1 - cos(SLOW_ANGLE)``.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from ._construct import IdealHeads, ResidualLayout, load_float64

FAST_PAIRS = 4
SLOW_ANGLE = 0.02  # radians: the most a slow pair may rotate between two positions of the context


class LlamaConstructor(IdealHeads):
    """Collects hand-set weights in the ideal basis and emits a ``LlamaForCausalLM``.

    Query heads ``group * (n_heads / n_kv_heads)`` .. share key/value head ``group``, as in Hugging
    Face's grouped-query attention. MLPs stay zero (gate, up and down projections), so they add nothing.
    """

    def __init__(self, layout: ResidualLayout, *, n_layers: int, n_heads: int, n_kv_heads: int, d_head: int,
                 vocab_size: int, n_ctx: int, d_mlp: int, rope_theta: float):
        if n_heads % n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        self.layout = layout
        self.n_layers, self.n_heads, self.n_kv_heads, self.d_head = n_layers, n_heads, n_kv_heads, d_head
        self.vocab_size, self.n_ctx, self.d_mlp, self.rope_theta = vocab_size, n_ctx, d_mlp, rope_theta
        di = layout.d_ideal
        self.tok_embed = torch.zeros(vocab_size, di)
        self.w_q = torch.zeros(n_layers, n_heads, di, d_head)
        self.w_k = torch.zeros(n_layers, n_kv_heads, di, d_head)
        self.w_v = torch.zeros(n_layers, n_kv_heads, di, d_head)
        self.w_o = torch.zeros(n_layers, n_heads, d_head, di)
        self.unembed = torch.zeros(di, vocab_size)
        if len(self.slow_coordinates()) == 0:
            raise ValueError(f"rope_theta {rope_theta} leaves no slow rotary pair over {n_ctx} positions")

    # -- rotary geometry -------------------------------------------------------------------------------
    def frequencies(self) -> Float[Tensor, " pairs"]:
        """``theta_i`` of each coordinate pair, as Hugging Face's default rotary embedding computes it."""
        exponent = torch.arange(0, self.d_head, 2, dtype=torch.float64) / self.d_head
        return 1.0 / (self.rope_theta ** exponent)

    def slow_coordinates(self) -> list[int]:
        """Coordinates of the pairs that rotate less than :data:`SLOW_ANGLE` across the context."""
        half = self.d_head // 2
        slow = [i for i, f in enumerate(self.frequencies().tolist()) if f * (self.n_ctx - 1) < SLOW_ANGLE]
        return [*slow, *(i + half for i in slow)]

    def position_query(self, offset: int, gain: float) -> Float[Tensor, " d_head"]:
        """Query (read from a constant feature of 1) that, against :meth:`position_key`, scores
        ``gain * sum_i cos(theta_i (q_pos - k_pos - offset))`` over the fast pairs."""
        half, q = self.d_head // 2, torch.zeros(self.d_head, dtype=torch.float64)
        theta = self.frequencies()[:FAST_PAIRS]
        q[:FAST_PAIRS] = gain * torch.cos(offset * theta)
        q[half:half + FAST_PAIRS] = -gain * torch.sin(offset * theta)
        return q.float()

    def position_key(self) -> Float[Tensor, " d_head"]:
        k = torch.zeros(self.d_head)
        k[:FAST_PAIRS] = 1.0
        return k

    def content(self, rows: Tensor) -> Float[Tensor, "rows d_head"]:
        """``rows`` (``[n, m]``, m at most the slow coordinates) written onto the slow coordinates."""
        slow = self.slow_coordinates()
        if rows.shape[1] > len(slow):
            raise ValueError(f"{rows.shape[1]} content dimensions, only {len(slow)} slow rotary coordinates")
        out = torch.zeros(rows.shape[0], self.d_head)
        out[:, slow[: rows.shape[1]]] = rows
        return out

    # -- weights ---------------------------------------------------------------------------------------
    def set_query(self, layer: int, head: int, w_q: Tensor) -> None:
        """``w_q`` ``[d_ideal, d_head]`` with scores as written: Llama's 1/sqrt(d_head) is folded in."""
        self.w_q[layer, head] = w_q * math.sqrt(self.d_head)

    def set_key_value(self, layer: int, group: int, *, k: Tensor | None = None, v: Tensor | None = None) -> None:
        if k is not None:
            self.w_k[layer, group] = k
        if v is not None:
            self.w_v[layer, group] = v

    def set_output(self, layer: int, head: int, w_o: Tensor) -> None:
        self.w_o[layer, head] = w_o

    def config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.layout.d_model, intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads, head_dim=self.d_head, max_position_embeddings=self.n_ctx,
            rms_norm_eps=1e-5, rope_theta=self.rope_theta, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )

    def to_hf(self) -> LlamaForCausalLM:
        lay = self.layout
        u = lay.basis()  # [d_model, d_ideal], float64
        model = LlamaForCausalLM(self.config())
        sd = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in model.state_dict().items()}
        gain = torch.full((lay.d_model,), lay.ln_gain(), dtype=torch.float64)
        sd["model.embed_tokens.weight"] = self.tok_embed.double() @ u.T + lay.constant().double()
        sd["model.norm.weight"] = gain
        for layer in range(self.n_layers):
            p = f"model.layers.{layer}."
            sd[p + "input_layernorm.weight"] = gain
            sd[p + "post_attention_layernorm.weight"] = gain
            # nn.Linear stores [out, in]: heads are contiguous d_head blocks of the output rows
            for name, w in (("q", self.w_q), ("k", self.w_k), ("v", self.w_v)):
                sd[p + f"self_attn.{name}_proj.weight"] = torch.cat([(u @ w_h.double()).T for w_h in w[layer]])
            sd[p + "self_attn.o_proj.weight"] = torch.cat([w_h.double() @ u.T for w_h in self.w_o[layer]]).T
        sd["lm_head.weight"] = (u @ self.unembed.double()).T.contiguous()
        load_float64(model, sd)
        return model.eval()
