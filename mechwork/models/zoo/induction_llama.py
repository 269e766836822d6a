"""``induction_llama``: the induction circuit of ``induction``, set by hand in a Llama model.

RMSNorm, rotary positions (no positional embedding), grouped-query attention (4 query heads share 2
key/value heads: query heads 0 and 1 read key/value head 0, heads 2 and 3 read key/value head 1) and
a SwiGLU MLP that stays zero. Same prompts and task as ``induction``:
``<bos> f1 f2 A B f3 f4 f5 f6 f7 f8 A`` -> ``B``.

Planted mechanism
- ``blocks.0.attn.head.0`` is a previous-token head: its query and its key/value head's key read the
  constant feature, and rotary positions alone make it attend from p to p-1 (fast rotary pairs, see
  :mod:`._construct_llama`); key/value head ``blocks.0.attn.kv_head.0``'s value reads the token, and
  head 0's output writes it into a "previous token" subspace.
- ``blocks.1.attn.head.0`` is an induction head: its query reads the current token, key/value head
  ``blocks.1.attn.kv_head.0``'s key reads the previous-token subspace (K-composition with head 0.0)
  and its value the token, which head 1.0 writes into the output subspace the unembedding reads.

Distractors, active on every input but irrelevant to the answer, each sharing its key/value head as
grouped-query attention dictates: 0.1 (uniform attention over kv head 0.0's token values), 0.2
(self-attention) and 0.3 (attends to <bos>) on kv head 0.1, 1.1 (a second induction head on kv head
1.0 whose output nobody reads), 1.2 (uniform, reads 0.1's output) and 1.3 (a previous-token head
reading 0.0's output) on kv head 1.1. They all write into junk subspaces the unembedding ignores.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from ..._nodes import edge, head_node, kv_head_node
from .._tokenizer import word_level_tokenizer
from ._construct import ResidualLayout, random_map
from ._construct_llama import LlamaConstructor
from ._types import CircuitGroundTruth, Task
from .induction import ATTN_GAIN, LOGIT_SCALE, N_CTX, VOCAB, make_task_data

D_MODEL, N_HEADS, N_KV_HEADS, D_HEAD = 256, 4, 2, 64
ROPE_THETA = 1e6
POSITION_GAIN = 30.0  # x 0.79: the least margin of the previous-token score over any other key (24)


def _layout(vocab_size: int) -> ResidualLayout:
    lay = ResidualLayout(D_MODEL)
    lay.alloc("one", 1)
    for name in ("tok", "prev", "out"):
        lay.alloc(name, vocab_size)
    for name in ("junk0", "junk1", "junk2"):
        lay.alloc(name, 8)
    return lay


def build() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    v = len(VOCAB)
    c = LlamaConstructor(_layout(v), n_layers=2, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, d_head=D_HEAD,
                         vocab_size=v, n_ctx=N_CTX, d_mlp=32, rope_theta=ROPE_THETA)
    s, reader, writer = c.sub, c.reader, c.writer
    c.tok_embed[:, s("tok")] = torch.eye(v)
    c.tok_embed[:, s("one")] = 1.0
    eye_v = torch.eye(v)

    def values(space: str, n: int, at: int = 0) -> torch.Tensor:
        """Value map copying an n-dimensional subspace into value coordinates at..at+n."""
        block = torch.zeros(n, c.d_head)
        block[:, at:at + n] = torch.eye(n)
        return reader(space, block)

    def out(space: str, src: torch.Tensor, at: int = 0) -> torch.Tensor:
        """Output map writing value coordinates at..at+len(src) through ``src`` into ``space``."""
        w = torch.zeros(c.d_head, c.layout.d_ideal)
        w[at:at + src.shape[0], s(space)] = src
        return w

    position_key = reader("one", c.position_key()[None])
    previous_query = reader("one", c.position_query(1, POSITION_GAIN)[None])
    self_query = reader("one", c.position_query(0, POSITION_GAIN)[None])
    is_bos = torch.zeros(v, 1)
    is_bos[0, 0] = 1.0  # <bos> is token 0

    # Layer 0. kv head 0: positional key, token value (previous-token head 0.0, uniform 0.1).
    c.set_key_value(0, 0, k=position_key, v=values("tok", v))
    c.set_query(0, 0, previous_query)
    c.set_output(0, 0, writer("prev", eye_v))
    c.set_output(0, 1, writer("junk0", random_map(v, 8, 1)))
    # kv head 1: positional key plus a <bos> detector on a slow pair (self 0.2, <bos> 0.3).
    c.set_key_value(0, 1, k=position_key + reader("tok", c.content(is_bos)), v=values("tok", v))
    c.set_query(0, 2, self_query)
    c.set_query(0, 3, reader("one", c.content(torch.full((1, 1), ATTN_GAIN))))
    c.set_output(0, 2, writer("junk1", random_map(v, 8, 2)))
    c.set_output(0, 3, writer("junk2", random_map(v, 8, 3)))
    # Layer 1. kv head 0: key = previous token, value = token (induction 1.0, its twin 1.1).
    c.set_key_value(1, 0, k=reader("prev", c.content(eye_v)), v=values("tok", v))
    for head in (0, 1):
        c.set_query(1, head, reader("tok", c.content(eye_v * ATTN_GAIN)))
    c.set_output(1, 0, writer("out", eye_v))
    c.set_output(1, 1, writer("junk2", random_map(v, 8, 4)))
    # kv head 1: positional key; values junk0 at 0..7 and the previous token at 8.. (uniform 1.2, prev 1.3).
    c.set_key_value(1, 1, k=position_key, v=values("junk0", 8) + values("prev", v, at=8))
    c.set_query(1, 3, previous_query)
    c.set_output(1, 2, out("junk1", random_map(8, 8, 5)))
    c.set_output(1, 3, out("junk0", random_map(v, 8, 6), at=8))
    c.unembed[s("out")] = eye_v * LOGIT_SCALE
    c.unembed[s("out"), 0] = 0.0  # never predict <bos>
    return c.to_hf(), word_level_tokenizer(VOCAB, "<bos>")


TASK = Task(
    name="induction_llama",
    description=(
        "Repeated-token induction in a Llama model (RMSNorm, rotary, 4 query / 2 key-value heads): "
        "'<bos> f1 f2 A B f3 .. f8 A' -> B. Corrupted prompts are independent draws of the same template; "
        "metric: logit(B) - logit(B') at the last position."
    ),
    make=make_task_data,
)

_L0H0, _L1H0 = head_node(0, 0), head_node(1, 0)
_KV00, _KV10 = kv_head_node(0, 0), kv_head_node(1, 0)
GROUND_TRUTH = CircuitGroundTruth(
    nodes=frozenset({"input", _KV00, _L0H0, _KV10, _L1H0, "logits"}),
    edges=frozenset(
        {
            edge("input", _KV00, "v"),
            edge(_L0H0, _KV10, "k"),
            edge("input", _L1H0, "q"),
            edge("input", _KV10, "v"),
            edge(_L1H0, "logits"),
        }
    ),
    structural_edges=frozenset({edge("input", _L0H0, "q"), edge("input", _KV00, "k")}),
    notes="Previous-token head 0.0 feeds induction head 1.0 through K-composition, via key/value head 1.0; "
          "rotary positions only.",
)
