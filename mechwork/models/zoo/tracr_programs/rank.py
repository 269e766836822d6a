"""Sort-like: where the current token would go in the sorted prefix (how many earlier tokens are smaller).

This is the first half of tracr's ``make_sort_unique`` (``target_pos``). The full sort cannot be made
causal: its output at position 0 is the smallest token of the whole input, which may come later, and a
causally masked position sees only its prefix. The rank within the prefix is what a causal model can
compute, and it is the quantity a sort is built from.
"""

from tracr.rasp import rasp

VOCAB = {1, 2, 3, 4, 5}
MAX_SEQ_LEN = 5
COMPILER_BOS = "BOS"
CAUSAL_SEMANTICS = True  # counts over the prefix, not the whole input


def program() -> rasp.SOp:
    smaller = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT).named("smaller")
    return rasp.SelectorWidth(smaller).named("rank")
