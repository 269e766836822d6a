"""A compiled program's whole input space and the RASP program's output on it: the hidden answer of the blind
"recover the program" challenge (``mechwork.challenges``, kind ``sequence-program``).

The space is every sequence of 1 .. ``MAX_SEQ_LEN`` input tokens (after BOS), shortest first, each length in
``itertools.product`` order over the vocabulary in tokenizer order (sorted by text). The answer for an input is
the program's output at its *last* position: a causal model's output at position p is its output on the
prefix ending at p, so the last positions of all inputs of all lengths cover every position once.

Held out: random inputs of ``MAX_SEQ_LEN + 1 .. 2 * MAX_SEQ_LEN`` tokens, longer than the model can run.
There only the program gives the answer; a table of the model's outputs over its (small) space cannot.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ._program import TracrProgram

MAX_INPUTS = 50_000  # larger spaces get no blind answer (the sandboxed run enumerates every input)
N_LONGER = 1000
Output = str | float | None  # categorical: the value's text (its token); numerical: the value; None: undefined


def space_size(n_values: int, max_length: int) -> int:
    return sum(n_values**length for length in range(1, max_length + 1))


def every_input(n_values: int, max_length: int) -> list[tuple[int, ...]]:
    """Every input as vocabulary indices: lengths 1 .. ``max_length``, each in ``itertools.product`` order."""
    return [x for length in range(1, max_length + 1) for x in itertools.product(range(n_values), repeat=length)]


def longer_inputs(n_values: int, max_length: int, n: int, seed: int) -> list[list[int]]:
    """``n`` random inputs (vocabulary indices) of ``max_length + 1 .. 2 * max_length`` tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max_length + 1, 2 * max_length + 1, size=n)
    return [rng.integers(0, n_values, size=int(length)).tolist() for length in lengths]


def rasp_last_outputs(program: TracrProgram, categorical: bool, inputs: list) -> list[Output]:
    """RASP's output at the last position of each input (vocabulary indices): with causal selectors where the
    program means them (``CAUSAL_SEMANTICS``), else on the input as given (which is the prefix a causal model
    sees). An input RASP cannot evaluate, or a None, has no defined output (None)."""
    from tracr.rasp import causal_eval, rasp

    evaluate = causal_eval.evaluate if program.causal_semantics else rasp.evaluate
    out: list[Output] = []
    for x in inputs:
        try:
            value = evaluate(program.expr, [program.vocab[i] for i in x])[-1]
        except (ValueError, TypeError, ZeroDivisionError):  # e.g. a categorical mean over different values
            value = None
        out.append(None if value is None else str(value) if categorical else float(value))
    return out


def blind_answer(program: TracrProgram, categorical: bool, *, n_longer: int = N_LONGER, seed: int = 0
                 ) -> dict[str, Any] | None:
    """The hidden answer over the whole space and ``n_longer`` longer inputs; None where the space is too large."""
    n_values, max_length = len(program.vocab), program.max_seq_len
    if space_size(n_values, max_length) > MAX_INPUTS:
        return None
    longer = longer_inputs(n_values, max_length, n_longer, seed)
    return {"outputs": rasp_last_outputs(program, categorical, every_input(n_values, max_length)),
            "longer": {"inputs": longer, "outputs": rasp_last_outputs(program, categorical, longer)}}
