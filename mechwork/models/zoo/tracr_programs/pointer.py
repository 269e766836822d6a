"""Pointer following, heads composing through the query: at each position, ``tokens[tokens[0]]``.

A first head copies the first token (a position, 0 .. 4) to every position; a second head's query reads
that copy and attends to the position it names (Q-composition), copying the token there. Under causal
masking the answer exists once the pointed-to position has been seen (RASP's None before that).
"""

from tracr.rasp import rasp

VOCAB = {0, 1, 2, 3, 4}
MAX_SEQ_LEN = 5
COMPILER_BOS = "BOS"
CAUSAL_SEMANTICS = True  # before the pointed-to position is seen, there is no answer yet


def program() -> rasp.SOp:
    first = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0), rasp.tokens)
    first = rasp.categorical(first).named("first_token")
    follow = rasp.Select(rasp.indices, first, rasp.Comparison.EQ).named("follow")
    return rasp.categorical(rasp.Aggregate(follow, rasp.tokens)).named("pointer")
