"""A histogram over the prefix: at each position, how many tokens so far equal the current one.

tracr's ``make_hist`` (RASP's ``SelectorWidth`` of "same token"), here under causal masking, so it counts
over the prefix rather than the whole input: one head attends to BOS and to every earlier match, an MLP
turns the attention BOS gets (1 / (count + 1)) back into the count.
"""

from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"a", "b", "c"}
MAX_SEQ_LEN = 6
COMPILER_BOS = "BOS"
CAUSAL_SEMANTICS = True  # counts over the prefix, not the whole input


def program() -> rasp.SOp:
    return lib.make_hist()
