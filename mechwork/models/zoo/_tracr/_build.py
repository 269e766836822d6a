"""``PROGRAM.py`` -> a verified Hugging Face checkpoint plus its ground truth, never half-written.

:func:`write_checkpoint` compiles, converts, saves the checkpoint, boots it through ``mechwork.load``
and checks it against tracr's own compiled model on ``n_check`` random inputs (and tracr's model
against RASP with causal selectors); only then does it write ``tracr.json`` (ground truth, the program's
output scheme, the checked inputs with their outputs, which the zoo task draws its prompts from, and RASP's
output on the whole input space, the blind challenge's hidden answer: see ``_space``).
:func:`import_program` does that in a temporary sibling folder renamed into place at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...._io import atomic_directory
from ._compile import CompiledProgram, compile_program
from ._convert import LN_EPS, TokenScheme, shapes_of, to_gpt2, token_scheme, tokenizer_for
from ._program import TracrProgramError, load_program
from ._space import blind_answer
from ._truth import components, ground_truth
from ._verify import (
    READOUT_ATOL,
    check_causal,
    mismatches,
    model_outputs,
    random_inputs,
    refuse_later_token_dependence,
    token_ids,
    tracr_outputs,
)

TRUTH_FILE = "tracr.json"
N_CHECK = 1000


def compile_file(path: str | Path) -> tuple[CompiledProgram, TokenScheme]:
    """Read, check and compile a program file; what can be refused before the slow craft and assembly steps
    (later-token dependence: RASP alone; output values the tokenizer cannot write) is refused there."""
    program = load_program(path)
    refuse_later_token_dependence(program)
    compiled = compile_program(program, check_outputs=lambda categorical, values: token_scheme(program, categorical,
                                                                                              values))
    return compiled, token_scheme(program, compiled.categorical, compiled.output_values)


def write_checkpoint(path: str | Path, folder: Path, *, n_check: int = N_CHECK, seed: int = 0) -> dict[str, Any]:
    """Write the checkpoint for the program at ``path`` into the (empty) ``folder``; return build facts."""
    compiled, scheme = compile_file(path)
    model = to_gpt2(compiled, scheme)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer_for(scheme).save_pretrained(folder)
    report = check_round_trip(compiled, scheme, folder, n_check=n_check, seed=seed)
    inputs = report.pop("inputs")
    outputs = report.pop("outputs")
    truth = ground_truth(compiled)
    record = {
        "program": compiled.program.name,
        "source": Path(path).read_text(),
        "vocab": list(scheme.input_tokens),
        "max_seq_len": compiled.program.max_seq_len,
        "bos": compiled.program.bos,
        "tokens": list(scheme.vocab),
        "categorical": compiled.categorical,
        "output_tokens": [scheme.vocab[i] for i in scheme.output_token_ids],
        "components": [{"node": c.name, "computes": c.computes, "writes": sorted(c.writes),
                        "reads": {str(port): sorted(d) for port, d in c.reads.items()}} for c in components(compiled)],
        "ground_truth": truth.to_dict(),
        "check": report,
        "samples": {"inputs": [[str(v) for v in x] for x in inputs], "outputs": outputs},
        # RASP's output on every input (and on held-out longer ones): the blind challenge's hidden answer
        "blind": blind_answer(compiled.program, compiled.categorical, seed=seed),
    }
    (folder / TRUTH_FILE).write_text(json.dumps(record, indent=1))
    shapes = shapes_of(compiled)
    return {"weights": "compiled by tracr (not trained)", "program": compiled.program.name,
            "layers": shapes.n_layers, "heads": shapes.n_heads, "d_model": shapes.d_model, **report}


def check_round_trip(compiled: CompiledProgram, scheme: TokenScheme, folder: Path, *, n_check: int,
                     seed: int) -> dict[str, Any]:
    """Boot ``folder`` through ``mechwork.load`` and compare it with tracr's model; refuse on any difference."""
    from ..._loading import load

    if n_check < 1:
        raise ValueError(f"n_check must be positive, got {n_check}")
    inputs = random_inputs(compiled.program, n_check, seed)
    tracr = tracr_outputs(compiled, inputs)
    rasp_checked = check_causal(compiled, inputs, tracr)
    model = load(folder)
    ours = model_outputs(model, scheme, token_ids(scheme, compiled.program.bos, inputs))
    bad = mismatches(tracr, ours)
    if bad.any():
        i, p = map(int, np.argwhere(bad)[0])
        raise TracrProgramError(
            f"{compiled.program.path}: the converted checkpoint disagrees with tracr's compiled model on "
            f"{int(bad.sum())} of {bad[:, 1:].size} positions (first: input {inputs[i]}, position {p}: tracr "
            f"{tracr.values[i, p]} from readout {np.round(tracr.readout[i, p], 4).tolist()}, checkpoint "
            f"{ours.values[i, p]} from {np.round(ours.readout[i, p], 4).tolist()}); nothing was written")
    decided = tracr.decided()
    last = tracr.values[:, -1]
    outputs = ([str(compiled.output_values[int(v)]) if ok else None for v, ok in zip(last, decided[:, -1],
                                                                                    strict=True)]
               if compiled.categorical else [float(v) for v in last])
    return {"n_inputs": n_check, "positions": int(bad[:, 1:].size),
            "undecided_positions": int((~decided[:, 1:]).sum()), "rasp_positions_checked": rasp_checked,
            "max_abs_readout_diff": float(np.abs(tracr.readout[:, 1:] - ours.readout[:, 1:]).max()),
            "readout_tolerance": READOUT_ATOL, "layer_norm_epsilon": LN_EPS, "inputs": inputs, "outputs": outputs}


def import_program(path: str | Path, out: str | Path, *, n_check: int = N_CHECK, seed: int = 0,
                   overwrite: bool = False) -> dict[str, Any]:
    """``mechwork zoo tracr PROGRAM.py --out DIR``: build in a temporary sibling of ``out``, rename at the end."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass overwrite")
    with atomic_directory(out) as tmp:
        facts = write_checkpoint(path, tmp, n_check=n_check, seed=seed)
        (tmp / "mechwork.json").write_text(json.dumps({"name": Path(path).stem, "kind": "compiled",
                                                       "facts": facts}, indent=2, default=str))
    return facts


def read_record(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / TRUTH_FILE
    if not path.is_file():
        raise TracrProgramError(f"{folder}: no {TRUTH_FILE} (not a checkpoint made by `mechwork zoo tracr`)")
    return json.loads(path.read_text())
