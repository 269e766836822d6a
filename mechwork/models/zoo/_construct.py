"""Hand-set GPT-2 weights: write a circuit in an idealised residual basis, get a real checkpoint.

A GPT-2 block normalises its input with LayerNorm. We make every LayerNorm act as a near-constant
scaling: two reserved residual dimensions carry +C and -C on every position, and every feature the
circuit writes lives in a subspace orthogonal to those dimensions and to the all-ones vector (so the
residual's mean is exactly zero). LayerNorm's divisor is then sqrt((|h|^2 + 2 C^2) / d_model), which
for |h| << C is a constant we cancel in the LayerNorm gain. The relative error is |h|^2 / (4 C^2).

Circuits are written as matrices over named feature subspaces ("tok", "pos", ...) of the ideal
basis; :meth:`GPT2Constructor.to_hf` maps them through an isometry ``U`` into the real residual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass(frozen=True)
class Subspace:
    name: str
    start: int
    size: int

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)


def gpt2_config(vocab_size: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int, d_mlp: int,
                activation: str) -> GPT2Config:
    """The GPT-2 config every zoo model uses: no dropout, untied unembedding, token 0 as bos/eos/pad."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_inner=d_mlp,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def token_circuit_layout(d_model: int, n_ctx: int, vocab_size: int, carrier: str) -> ResidualLayout:
    """The layout of the constructed circuits: a constant, positions, the token, what the circuit carries
    between its heads (``carrier``), the output, and three 8-dimensional junk subspaces for distractors."""
    lay = ResidualLayout(d_model)
    lay.alloc("one", 1)
    lay.alloc("pos", n_ctx)
    for name in ("tok", carrier, "out"):
        lay.alloc(name, vocab_size)
    for name in ("junk0", "junk1", "junk2"):
        lay.alloc(name, 8)
    return lay


class ResidualLayout:
    """Allocates named feature subspaces of the ideal basis and maps them into the real residual."""

    def __init__(self, d_model: int, const_scale: float = 200.0):
        self.d_model = d_model
        self.const_scale = const_scale
        self._subspaces: dict[str, Subspace] = {}
        self._next = 0

    @property
    def capacity(self) -> int:
        # d_model minus the all-ones direction and the two reserved constant dimensions.
        return self.d_model - 3

    def alloc(self, name: str, size: int) -> Subspace:
        if name in self._subspaces:
            raise ValueError(f"subspace {name!r} already allocated")
        if self._next + size > self.capacity:
            raise ValueError(f"residual too small: {name!r} needs {size}, {self.capacity - self._next} left")
        sub = Subspace(name, self._next, size)
        self._subspaces[name] = sub
        self._next += size
        return sub

    def __getitem__(self, name: str) -> Subspace:
        return self._subspaces[name]

    @property
    def d_ideal(self) -> int:
        return self.capacity

    def basis(self) -> Float[Tensor, "d_model d_ideal"]:
        """Orthonormal columns orthogonal to the ones vector and the two reserved dimensions (float64)."""
        d = self.d_model
        seed = torch.zeros(d, d, dtype=torch.float64)
        seed[:, 0] = 1.0  # all-ones direction
        seed[0, 1] = 1.0  # reserved dimension 0
        seed[1, 2] = 1.0  # reserved dimension 1
        for i in range(3, d):
            seed[i - 1, i] = 1.0  # standard basis vectors e_2 .. e_{d-1}
        q, _ = torch.linalg.qr(seed)
        return q[:, 3:]  # float64: to_hf multiplies in float64 and rounds to float32 once

    def constant(self) -> Float[Tensor, " d_model"]:
        c = torch.zeros(self.d_model)
        c[0], c[1] = self.const_scale, -self.const_scale
        return c

    def ln_gain(self) -> float:
        """LayerNorm gain that cancels the constant part's normalisation."""
        return self.const_scale * math.sqrt(2.0 / self.d_model)


class IdealHeads:
    """Reads and writes of attention heads in the ideal basis, shared by the GPT-2 and Llama constructors."""

    layout: ResidualLayout
    d_head: int

    def sub(self, name: str) -> slice:
        return self.layout[name].slice

    def reader(self, space: str, block: Tensor) -> Tensor:
        """``[d_ideal, d_head]`` map that reads ``block`` out of subspace ``space`` (for W_Q, W_K, W_V)."""
        w = torch.zeros(self.layout.d_ideal, self.d_head)
        w[self.sub(space)] = block
        return w

    def writer(self, space: str, block: Tensor) -> Tensor:
        """``[d_head, d_ideal]`` map writing ``block``'s rows into subspace ``space`` (for W_O)."""
        w = torch.zeros(self.d_head, self.layout.d_ideal)
        w[: block.shape[0], self.sub(space)] = block
        return w


class GPT2Constructor(IdealHeads):
    """Collects hand-set weights in the ideal basis and emits a ``GPT2LMHeadModel``."""

    def __init__(
        self,
        layout: ResidualLayout,
        *,
        n_layers: int,
        n_heads: int,
        vocab_size: int,
        n_ctx: int,
        d_mlp: int,
        activation: str = "relu",
    ):
        if layout.d_model % n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.layout = layout
        self.n_layers, self.n_heads = n_layers, n_heads
        self.d_head = layout.d_model // n_heads
        self.vocab_size, self.n_ctx, self.d_mlp = vocab_size, n_ctx, d_mlp
        self.activation = activation
        di = layout.d_ideal
        self.tok_embed = torch.zeros(vocab_size, di)
        self.pos_embed = torch.zeros(n_ctx, di)
        shape_qk = (n_layers, n_heads, di, self.d_head)
        self.w_q, self.w_k, self.w_v = torch.zeros(shape_qk), torch.zeros(shape_qk), torch.zeros(shape_qk)
        self.w_o = torch.zeros(n_layers, n_heads, self.d_head, di)
        self.mlp_in = torch.zeros(n_layers, di, d_mlp)
        self.mlp_b_in = torch.zeros(n_layers, d_mlp)
        self.mlp_out = torch.zeros(n_layers, d_mlp, di)
        self.unembed = torch.zeros(di, vocab_size)

    def one_hot_embeddings(self) -> None:
        """Tokens one-hot in subspace ``tok``, positions one-hot in ``pos``, a constant 1 in ``one`` (the
        embeddings of every :func:`token_circuit_layout` model)."""
        self.tok_embed[:, self.sub("tok")] = torch.eye(self.tok_embed.shape[0])
        self.pos_embed[:, self.sub("pos")] = torch.eye(self.pos_embed.shape[0])
        self.pos_embed[:, self.sub("one")] = 1.0

    def set_head(
        self,
        layer: int,
        head: int,
        *,
        qk: tuple[Tensor, Tensor] | None = None,
        ov: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        """``qk = (W_Q, W_K)`` each ``[d_ideal, d_head]``, score = (x W_Q)·(y W_K) before 1/sqrt(d_head);
        ``ov = (W_V [d_ideal, d_head], W_O [d_head, d_ideal])``."""
        if qk is not None:
            # GPT-2 divides scores by sqrt(d_head); fold the inverse into W_Q so scores are as written.
            self.w_q[layer, head] = qk[0] * math.sqrt(self.d_head)
            self.w_k[layer, head] = qk[1]
        if ov is not None:
            self.w_v[layer, head], self.w_o[layer, head] = ov

    def to_hf(self) -> GPT2LMHeadModel:
        lay = self.layout
        # Products in float64, rounded to float32 once: float32 matmuls round differently with the number
        # of threads and the BLAS build, and the weights (and every circuit file's weight hash) must be
        # the same bits on every machine.
        u = lay.basis()  # [d_model, d_ideal], float64
        d = lay.d_model
        cfg = gpt2_config(self.vocab_size, self.n_ctx, d, self.n_layers, self.n_heads, self.d_mlp, self.activation)
        model = GPT2LMHeadModel(cfg)
        sd = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in model.state_dict().items()}
        gain = lay.ln_gain()
        sd["transformer.wte.weight"] = self.tok_embed.double() @ u.T
        sd["transformer.wpe.weight"] = self.pos_embed.double() @ u.T + lay.constant()
        for name in list(sd):
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                sd[name] = torch.full((d,), gain)
        for layer in range(self.n_layers):
            p = f"transformer.h.{layer}."
            # c_attn is a Conv1D: x @ W with W [d_model, 3 d_model]; heads are contiguous d_head chunks.
            q = torch.cat([u @ self.w_q[layer, h].double() for h in range(self.n_heads)], dim=1)
            k = torch.cat([u @ self.w_k[layer, h].double() for h in range(self.n_heads)], dim=1)
            v = torch.cat([u @ self.w_v[layer, h].double() for h in range(self.n_heads)], dim=1)
            sd[p + "attn.c_attn.weight"] = torch.cat([q, k, v], dim=1)
            w_o = [self.w_o[layer, h].double() @ u.T for h in range(self.n_heads)]
            sd[p + "attn.c_proj.weight"] = torch.cat(w_o, 0)
            sd[p + "mlp.c_fc.weight"] = u @ self.mlp_in[layer].double()
            sd[p + "mlp.c_fc.bias"] = self.mlp_b_in[layer].double()
            sd[p + "mlp.c_proj.weight"] = self.mlp_out[layer].double() @ u.T
        sd["lm_head.weight"] = (u @ self.unembed.double()).T.contiguous()
        load_float64(model, sd)
        return model.eval()


def load_float64(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load float64 weights rounded to float32 once. Entries that are zero in the ideal basis come out as
    float64 noise (~1e-15) that differs with the thread count: they are snapped to zero first."""
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise RuntimeError(f"constructor left weights unset: {sorted(missing)}")
    model.load_state_dict({k: v.masked_fill(v.abs() < 1e-9, 0.0).to(torch.float32) for k, v in state.items()})


def one_hot_rows(n: int, width: int, scale: float = 1.0) -> Tensor:
    """``[n, width]`` identity block (first n columns), scaled."""
    out = torch.zeros(n, width)
    out[:, :n] = torch.eye(n) * scale
    return out


def random_map(rows: int, cols: int, seed: int) -> Tensor:
    """A fixed random map with unit-norm columns, for distractor writes into junk subspaces."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, cols, generator=g)
    return m / m.norm(dim=0, keepdim=True)
