"""ACDC's tracr "proportion" task: at each position, the fraction of tokens so far that are 'x'."""

from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"a", "b", "c", "x"}
MAX_SEQ_LEN = 5
COMPILER_BOS = "BOS"


def program() -> rasp.SOp:
    return lib.make_frac_prevs(rasp.tokens == "x")
