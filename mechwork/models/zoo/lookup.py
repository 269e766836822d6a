"""``lookup``: a 2-layer model that moves a token with attention and looks it up with an MLP.

Prompt (8 tokens): ``<bos> s f1 f2 f3 f4 f5 =`` -> predicts ``TABLE[s]``, a fixed random permutation
of the letters (the planted lookup table).

Planted mechanism
- ``blocks.0.attn.head.0`` (mover) attends from every position to position 1 and copies the subject
  token into a "moved" subspace.
- ``blocks.1.mlp`` has one ReLU neuron per letter t, firing iff the moved token is t, writing
  ``TABLE[t]`` into the output subspace the unembedding reads.

Distractors: 0.1 (a second mover whose output nobody reads), 0.2 (previous-token), 0.3 (uniform),
``blocks.0.mlp`` (per-token neurons writing junk), 1.0 (reads the moved subspace, writes junk),
1.1 (reads 0.1's junk), 1.2 (previous-token), 1.3 (attends to <bos>).
"""

from __future__ import annotations

import string

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from ..._nodes import edge, head_node, mlp_node
from .._tokenizer import word_level_tokenizer
from ._construct import GPT2Constructor, one_hot_rows, random_map, token_circuit_layout
from ._types import CircuitGroundTruth, Task, TaskData, distinct_tokens

LETTERS = list(string.ascii_lowercase)
VOCAB = ["<bos>", *LETTERS, "="]
EQUALS = len(VOCAB) - 1
N_CTX = 8
SUBJECT_POS = 1
ATTN_GAIN = 20.0
LOGIT_SCALE = 10.0
D_MODEL, N_HEADS, D_MLP = 128, 4, 32
TABLE_SEED = 1234


def lookup_table() -> torch.Tensor:
    """``table[token_id]`` = answer token id, for letter ids 1..26 (the planted permutation)."""
    perm = torch.randperm(len(LETTERS), generator=torch.Generator().manual_seed(TABLE_SEED)) + 1
    table = torch.zeros(len(VOCAB), dtype=torch.long)
    table[1 : len(LETTERS) + 1] = perm
    return table


def build() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    lay = token_circuit_layout(D_MODEL, N_CTX, len(VOCAB), carrier="moved")
    v = len(VOCAB)
    c = GPT2Constructor(lay, n_layers=2, n_heads=N_HEADS, vocab_size=v, n_ctx=N_CTX, d_mlp=D_MLP)
    dh = c.d_head
    s = c.sub
    c.one_hot_embeddings()

    reader, writer = c.reader, c.writer

    def attend_to(pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = torch.zeros(1, dh), torch.zeros(N_CTX, dh)
        q[0, 0], k[pos, 0] = ATTN_GAIN, 1.0
        return reader("one", q), reader("pos", k)

    shift = torch.zeros(N_CTX, dh)
    for p in range(1, N_CTX):
        shift[p, p - 1] = ATTN_GAIN
    prev_qk = (reader("pos", shift), reader("pos", one_hot_rows(N_CTX, dh)))
    read_tok = reader("tok", one_hot_rows(v, dh))

    # Planted circuit: mover head 0.0 then lookup MLP in block 1.
    c.set_head(0, 0, qk=attend_to(SUBJECT_POS), ov=(read_tok, writer("moved", torch.eye(v))))
    table = lookup_table()
    for t in range(1, len(LETTERS) + 1):
        neuron = t - 1
        c.mlp_in[1, s("moved").start + t, neuron] = 2.0
        c.mlp_b_in[1, neuron] = -1.0
        c.mlp_out[1, neuron, s("out").start + int(table[t])] = 1.0
    # Distractors.
    c.set_head(0, 1, qk=attend_to(SUBJECT_POS), ov=(read_tok, writer("junk0", random_map(v, 8, 11))))
    c.set_head(0, 2, qk=prev_qk, ov=(read_tok, writer("junk1", random_map(v, 8, 12))))
    c.set_head(0, 3, ov=(read_tok, writer("junk2", random_map(v, 8, 13))))
    for t in range(1, len(LETTERS) + 1):
        neuron = t - 1
        c.mlp_in[0, s("tok").start + t, neuron] = 2.0
        c.mlp_b_in[0, neuron] = -1.0
    c.mlp_out[0, : len(LETTERS), s("junk1")] = random_map(len(LETTERS), 8, 14)
    c.set_head(1, 0, ov=(reader("moved", one_hot_rows(v, dh)), writer("junk2", random_map(v, 8, 15))))
    c.set_head(1, 1, ov=(reader("junk0", one_hot_rows(8, dh)), writer("junk2", random_map(8, 8, 16))))
    c.set_head(1, 2, qk=prev_qk, ov=(read_tok, writer("junk1", random_map(v, 8, 17))))
    c.set_head(1, 3, qk=attend_to(0), ov=(read_tok, writer("junk0", random_map(v, 8, 18))))
    c.unembed[s("out")] = torch.eye(v) * LOGIT_SCALE
    c.unembed[s("out"), 0] = 0.0
    return c.to_hf(), word_level_tokenizer(VOCAB, "<bos>")


def _prompts(g: torch.Generator, n: int) -> torch.Tensor:
    prompts = torch.zeros(n, N_CTX, dtype=torch.long)
    prompts[:, 1:7] = distinct_tokens(g, n, 1, len(LETTERS) + 1, 6)
    prompts[:, 7] = EQUALS
    return prompts


def make_task_data(n: int, seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    clean, corrupted = _prompts(g, n), _prompts(g, n)
    same = corrupted[:, SUBJECT_POS] == clean[:, SUBJECT_POS]
    while same.any():
        corrupted[same] = _prompts(g, int(same.sum()))
        same = corrupted[:, SUBJECT_POS] == clean[:, SUBJECT_POS]
    table = lookup_table()
    return TaskData(
        clean=clean,
        corrupted=corrupted,
        answers=table[clean[:, SUBJECT_POS]],
        wrong=table[corrupted[:, SUBJECT_POS]],
        position=-1,
    )


TASK = Task(
    name="lookup",
    description=(
        "Table lookup: '<bos> s f1 .. f5 =' -> TABLE[s] for a hidden permutation TABLE of the letters. "
        "Corrupted prompts have another subject; metric: logit(TABLE[s]) - logit(TABLE[s'])."
    ),
    make=make_task_data,
)

_MOVER, _MLP1 = head_node(0, 0), mlp_node(1)
GROUND_TRUTH = CircuitGroundTruth(
    nodes=frozenset({"input", _MOVER, _MLP1, "logits"}),
    edges=frozenset({edge("input", _MOVER, "v"), edge(_MOVER, _MLP1), edge(_MLP1, "logits")}),
    structural_edges=frozenset({edge("input", _MOVER, "q"), edge("input", _MOVER, "k")}),
    notes="Mover head 0.0 copies the subject; the block-1 MLP maps it through the lookup table.",
)
