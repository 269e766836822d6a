"""``induction``: a 2-layer model whose induction circuit is set by hand.

Prompt (12 tokens): ``<bos> f1 f2 A B f3 f4 f5 f6 f7 f8 A`` -> predicts ``B``.

Planted mechanism
- ``blocks.0.attn.head.0`` is a previous-token head: it attends from position p to p-1 (query and key
  read the positional embedding) and copies that token into a "previous token" subspace.
- ``blocks.1.attn.head.0`` is an induction head: its query reads the current token, its key reads the
  previous-token subspace (K-composition with head 0.0), so at the final ``A`` it attends to the
  position after the first ``A`` and copies that token (``B``, via its value) into the output subspace
  the unembedding reads.

Distractors, active on every input but irrelevant to the answer: 0.1 (uniform attention), 0.2
(self-attention), 0.3 (attends to <bos>), 1.1 (a second induction head whose output nobody reads),
1.2 (reads 0.1's output), 1.3 (a previous-token head reading 0.0's output). They all write into junk
subspaces the unembedding ignores. MLPs are zero.
"""

from __future__ import annotations

import string

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from ..._nodes import edge, head_node
from .._tokenizer import word_level_tokenizer
from ._construct import GPT2Constructor, one_hot_rows, random_map, token_circuit_layout
from ._types import CircuitGroundTruth, Task, TaskData, distinct_tokens

VOCAB = ["<bos>", *string.ascii_lowercase]
N_CTX = 16
PROMPT_LEN = 12
FIRST_A, ANSWER_POS = 3, 4
ATTN_GAIN = 20.0
LOGIT_SCALE = 10.0
D_MODEL, N_HEADS = 128, 4


def build() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    lay = token_circuit_layout(D_MODEL, N_CTX, len(VOCAB), carrier="prev")
    v = len(VOCAB)
    c = GPT2Constructor(lay, n_layers=2, n_heads=N_HEADS, vocab_size=v, n_ctx=N_CTX, d_mlp=32)
    dh = c.d_head
    s = c.sub
    c.one_hot_embeddings()

    reader, writer = c.reader, c.writer

    ident_v = one_hot_rows(v, dh)
    shift = torch.zeros(N_CTX, dh)  # query at position p points at key slot p-1
    for p in range(1, N_CTX):
        shift[p, p - 1] = ATTN_GAIN
    prev_token_qk = (reader("pos", shift), reader("pos", one_hot_rows(N_CTX, dh)))
    induction_qk = (reader("tok", ident_v * ATTN_GAIN), reader("prev", ident_v))
    self_qk = (reader("pos", one_hot_rows(N_CTX, dh, ATTN_GAIN)), reader("pos", one_hot_rows(N_CTX, dh)))
    bos_q = torch.zeros(1, dh)
    bos_q[0, 0] = ATTN_GAIN
    bos_k = torch.zeros(N_CTX, dh)
    bos_k[0, 0] = 1.0
    bos_qk = (reader("one", bos_q), reader("pos", bos_k))

    def copy_tok_to(space: str, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.eye(v) if seed is None else random_map(v, 8, seed)
        return reader("tok", ident_v), writer(space, out)

    # Planted circuit.
    c.set_head(0, 0, qk=prev_token_qk, ov=(reader("tok", ident_v), writer("prev", torch.eye(v))))
    c.set_head(1, 0, qk=induction_qk, ov=copy_tok_to("out", None))
    # Distractors.
    c.set_head(0, 1, ov=copy_tok_to("junk0", 1))
    c.set_head(0, 2, qk=self_qk, ov=copy_tok_to("junk1", 2))
    c.set_head(0, 3, qk=bos_qk, ov=copy_tok_to("junk2", 3))
    c.set_head(1, 1, qk=induction_qk, ov=copy_tok_to("junk2", 4))
    c.set_head(1, 2, ov=(reader("junk0", one_hot_rows(8, dh)), writer("junk1", random_map(8, 8, 5))))
    c.set_head(1, 3, qk=prev_token_qk, ov=(reader("prev", ident_v), writer("junk0", random_map(v, 8, 6))))
    c.unembed[s("out")] = torch.eye(v) * LOGIT_SCALE
    c.unembed[s("out"), 0] = 0.0  # never predict <bos>
    return c.to_hf(), word_level_tokenizer(VOCAB, "<bos>")


def _prompts(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    draws = distinct_tokens(g, n, 1, len(VOCAB), 10)  # f1 f2 A B f3..f8
    prompts = torch.zeros(n, PROMPT_LEN, dtype=torch.long)
    prompts[:, 1:11] = draws
    prompts[:, 11] = draws[:, FIRST_A - 1]
    return prompts, prompts[:, ANSWER_POS]


def make_task_data(n: int, seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    clean, answers = _prompts(g, n)
    corrupted, wrong = _prompts(g, n)
    clash = wrong == answers
    while clash.any():
        corrupted[clash], wrong[clash] = _prompts(g, int(clash.sum()))
        clash = wrong == answers
    return TaskData(clean=clean, corrupted=corrupted, answers=answers, wrong=wrong, position=-1)


TASK = Task(
    name="induction",
    description=(
        "Repeated-token induction: '<bos> f1 f2 A B f3 .. f8 A' -> B. Corrupted prompts are independent "
        "draws of the same template; metric: logit(B) - logit(B') at the last position."
    ),
    make=make_task_data,
)

_L0H0, _L1H0 = head_node(0, 0), head_node(1, 0)
GROUND_TRUTH = CircuitGroundTruth(
    nodes=frozenset({"input", _L0H0, _L1H0, "logits"}),
    edges=frozenset(
        {
            edge("input", _L0H0, "v"),
            edge(_L0H0, _L1H0, "k"),
            edge("input", _L1H0, "q"),
            edge("input", _L1H0, "v"),
            edge(_L1H0, "logits"),
        }
    ),
    structural_edges=frozenset({edge("input", _L0H0, "q"), edge("input", _L0H0, "k")}),
    notes="Previous-token head 0.0 feeds induction head 1.0 through K-composition.",
)
