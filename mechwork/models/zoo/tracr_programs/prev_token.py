"""Previous-token copy: at each position, the token one place back (None at the first token)."""

from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"a", "b", "c", "d"}
MAX_SEQ_LEN = 6
COMPILER_BOS = "BOS"


def program() -> rasp.SOp:
    return lib.shift_by(1, rasp.tokens).named("prev_token")
