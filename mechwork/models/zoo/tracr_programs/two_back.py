"""Two layers of heads composing through their values: the token two places back.

A previous-token head writes the previous token; a second previous-token head in the next layer moves
*that* value one place further (V-composition), so position p receives the token at p - 2.
"""

from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"a", "b", "c", "d"}
MAX_SEQ_LEN = 6
COMPILER_BOS = "BOS"


def program() -> rasp.SOp:
    prev = lib.shift_by(1, rasp.tokens).named("prev_token")
    return lib.shift_by(1, prev).named("two_back")
