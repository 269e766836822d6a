"""Heads composing through MLPs: the fraction of positions 1 .. p whose token repeats the one before.

A previous-token head writes the previous token, an MLP compares it with the current token, a second
MLP turns that into a number and a second head averages it over the prefix (a numerical mean, as in
ACDC's "proportion"). Position 0 has no previous token (RASP's None there), so the mean starts at 1.
"""

from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"a", "b", "c"}
MAX_SEQ_LEN = 6
COMPILER_BOS = "BOS"


def program() -> rasp.SOp:
    prev = lib.shift_by(1, rasp.tokens).named("prev_token")
    same = rasp.categorical(rasp.SequenceMap(lambda x, y: x == y, rasp.tokens, prev)).named("same_as_prev")
    repeats = rasp.numerical(rasp.Map(lambda s: 1 if s else 0, same)).named("repeats")
    after_first = rasp.Select(rasp.indices, rasp.indices, lambda k, q: 0 < k <= q).named("after_first")
    return rasp.numerical(rasp.Aggregate(after_first, repeats, default=0)).named("frac_repeats")
