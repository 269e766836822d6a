"""Running a compiled program three ways on the same random inputs: RASP with causal selectors, tracr's
own compiled model, and the Hugging Face checkpoint through ``mechwork.load``.

Inputs are full length (``MAX_SEQ_LEN`` tokens after BOS): every model here is causal, so the output
at position p of a full-length input is the output of its length-p prefix, and full-length inputs
check every shorter length too. tracr's model runs batched through ``assembled.forward`` (the function
``assembled.apply`` calls for one input) and is decoded as ``apply`` decodes: categorical outputs are
the argmax over the output space, numerical outputs the value in the output direction.

What must agree. At every position after BOS, the readout (the residual projected on the output
space: tracr's logits before its argmax, our logits at the output tokens) within ``READOUT_ATOL``;
for categorical outputs also the decoded value, wherever it is *decided*: the best output value leads
the second by more than ``DECIDED_MARGIN``. Where it does not, the program's output is a tie, in
practice an all-zero readout where RASP's value is None (nothing selected), and tracr's own argmax
is then decided by float noise of order 1e-8; such positions are counted, not compared by argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int

from ._compile import CompiledProgram
from ._convert import TokenScheme
from ._program import TracrProgram, TracrProgramError

NUMERICAL_ATOL = 1e-4  # numerical outputs: |tracr - RASP| at most this
READOUT_ATOL = 1e-4  # |checkpoint - tracr| readouts at most this
DECIDED_MARGIN = 1e-2
N_PREFIX_CHECK = 200  # inputs on which a program must not depend on later tokens (RASP, every prefix)


@dataclass(frozen=True)
class Outputs:
    """Per input and position (BOS included at 0): categorical output indices or numerical values."""

    values: np.ndarray  # [n, 1 + max_seq_len]; int output-direction index, or float value
    readout: np.ndarray  # [n, 1 + max_seq_len, n_outputs] float: the logits over the output space
    categorical: bool

    def decided(self) -> np.ndarray:
        """``[n, pos]`` True where the decoded value does not hang on a tie (always, for numerical outputs)."""
        if not self.categorical or self.readout.shape[-1] < 2:
            return np.ones(self.values.shape, dtype=bool)
        top2 = np.sort(self.readout, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0] > DECIDED_MARGIN


def random_inputs(program: TracrProgram, n: int, seed: int) -> list[list]:
    """``n`` inputs of ``MAX_SEQ_LEN`` tokens drawn uniformly from the vocabulary (program values, not text)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(program.vocab), size=(n, program.max_seq_len))
    return [[program.vocab[i] for i in row] for row in draws]


def tracr_outputs(compiled: CompiledProgram, inputs: list[list]) -> Outputs:
    import jax
    import jax.numpy as jnp

    assembled = compiled.assembled
    encoded = jnp.array([assembled.input_encoder.encode([compiled.program.bos, *x]) for x in inputs])
    forward = jax.jit(assembled.forward)(assembled.params, encoded)  # one compilation, not one per op
    out = np.asarray(forward.unembedded_output)
    labels = list(compiled.residual_labels)
    columns = [labels.index(label) for label in compiled.output_labels]
    readout = np.asarray(forward.transformer_output.output, dtype=np.float64)[..., columns]
    return Outputs(out.astype(np.int64) if compiled.categorical else out.astype(np.float64), readout,
                   compiled.categorical)


def token_ids(scheme: TokenScheme, bos: str, inputs: list[list]) -> Int[torch.Tensor, "batch pos"]:
    return torch.tensor([[0, *(scheme.token_id(str(v)) for v in x)] for x in inputs], dtype=torch.long)


def model_outputs(model, scheme: TokenScheme, tokens: Int[torch.Tensor, "batch pos"]) -> Outputs:
    with torch.no_grad():
        logits: Float[torch.Tensor, "batch pos vocab"] = model(tokens)
    read = logits[..., list(scheme.output_token_ids)].double()
    if scheme.categorical:
        return Outputs(read.argmax(-1).numpy(), read.numpy(), True)
    return Outputs(read[..., 0].numpy(), read.numpy(), False)


def mismatches(tracr: Outputs, ours: Outputs) -> np.ndarray:
    """``[n, pos]`` True where the checkpoint disagrees with tracr (BOS position excluded)."""
    bad = (np.abs(tracr.readout - ours.readout) > READOUT_ATOL).any(-1)
    if tracr.categorical:
        bad |= tracr.decided() & (tracr.values != ours.values)
    bad[:, 0] = False
    return bad


def rasp_mismatches(compiled: CompiledProgram, inputs: list[list], tracr: Outputs) -> tuple[int, int]:
    """Positions where tracr's causal model disagrees with RASP evaluated with causal selectors, out of the
    positions RASP defines (RASP's None, tracr's 'unspecified', is not compared)."""
    from tracr.rasp import causal_eval

    values = compiled.output_values
    bad = checked = 0
    for x, row in zip(inputs, tracr.values, strict=True):
        try:
            expected = causal_eval.evaluate(compiled.program.expr, x)
        except (ValueError, TypeError):  # e.g. a categorical mean over different values: undefined in RASP
            continue
        for pos, want in enumerate(expected, start=1):
            if want is None:
                continue
            checked += 1
            got = values[row[pos]] if compiled.categorical else row[pos]
            ok = got == want if compiled.categorical else abs(float(got) - float(want)) <= NUMERICAL_ATOL
            bad += not ok
    return bad, checked


def later_token_dependence(program: TracrProgram, inputs: list[list]) -> tuple[list, int] | None:
    """The first (input, position) where RASP on the whole input differs from RASP on the prefix ending
    there, i.e. where the program's output depends on later tokens; None if there is none."""
    from tracr.rasp import rasp

    categorical = rasp.is_categorical(program.expr)
    for x in inputs:
        try:
            whole = rasp.evaluate(program.expr, x)
        except (ValueError, TypeError):
            continue
        for p in range(len(x)):
            try:
                prefix = rasp.evaluate(program.expr, x[: p + 1])[p]
            except (ValueError, TypeError):
                continue
            if not _same(whole[p], prefix, categorical):
                return x, p
    return None


def _same(a, b, categorical: bool) -> bool:
    if a is None or b is None or categorical:
        return a == b
    return abs(float(a) - float(b)) <= NUMERICAL_ATOL


def refuse_later_token_dependence(program: TracrProgram, *, seed: int = 0) -> None:
    """Before compiling (RASP alone decides it): a program not meant with causal selectors must not depend on
    later tokens on ``N_PREFIX_CHECK`` random inputs, since a causal model sees only the prefix."""
    if program.causal_semantics:
        return
    found = later_token_dependence(program, random_inputs(program, N_PREFIX_CHECK, seed))
    if found is not None:
        x, p = found
        raise TracrProgramError(
            f"{program.path}: the program fails under causal masking: its output at position {p} of {x} depends "
            "on later tokens (RASP on the whole input and on the prefix differ there), and a causal model sees "
            "only the prefix. Set CAUSAL_SEMANTICS = True if the program is meant to be read with causal "
            "selectors (each position looking at itself and earlier tokens)")


def check_causal(compiled: CompiledProgram, inputs: list[list], tracr: Outputs) -> int:
    """tracr's causally masked model against RASP with causal selectors; returns the positions compared."""
    bad, checked = rasp_mismatches(compiled, inputs, tracr)
    if checked == 0:
        raise TracrProgramError(f"{compiled.program.path}: RASP defines no output on {len(inputs)} random inputs; "
                                "nothing to check the compiled model against")
    if bad:
        raise TracrProgramError(
            f"{compiled.program.path}: the program fails under causal masking: tracr's causally-masked model "
            f"disagrees with the RASP program evaluated with causal selectors on {bad} of {checked} positions "
            "(each position may only look at itself and earlier tokens)")
    return checked
