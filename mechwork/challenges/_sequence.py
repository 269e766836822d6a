"""The ``sequence-program`` kind: recover, from the model alone, the program it computes on token sequences.

Made for models compiled by tracr from a hidden RASP program (the built-in blind challenges, and
:func:`~._create.create_tracr_challenge` for a program of your own). The input space is every sequence
``BOS x1 .. xn`` with n in 1 .. ``max_length`` and each x one of ``values``; the answer for an input is the
program's output at its last position (a causal model's output at position p is that of the prefix ending
at p, so this covers every position). Outputs are categorical (one of the output tokens, read as the
argmax of their logits; an all-tie is no output, None) or numerical (the logit of one token minus BOS's).

The participant submits a Python file defining ``program(tokens)``: a list of token texts in, one output
per position out (token text or number; None where the program has none). It runs in the sandbox
(``_sandbox``) on every input of the space and on held-out inputs longer than the model can run, whose
answers no table of the model's outputs can give. Scored by exact-match accuracy against the hidden
program's outputs (numerical: within ``NUMERICAL_TOLERANCE``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..models import load
from ..models.zoo._tracr._space import MAX_INPUTS, every_input, space_size
from ..models.zoo._tracr._verify import DECIDED_MARGIN
from ._kinds import refuse_unknown, register_kind, require
from ._submissions import RUNNER_PREAMBLE, _check_size, run_for_answer
from ._types import Challenge, ChallengeError, ChallengeKind, Score, SubmissionError

KIND = "sequence-program"
NUMERICAL_TOLERANCE = 1e-4
MAX_OUTPUT_TEXT = 64  # characters of one categorical output a submission may return
Output = str | int | float | None  # token text, number (a bool is an int), or None: no output


# ---- the space (public) and the answer (hidden) ----------------------------------------------------
@dataclass(frozen=True)
class SequenceSpace:
    """Inputs ``bos x1 .. xn`` (n in 1 .. ``max_length``, each x one of ``values``); outputs one of
    ``outputs`` (categorical) or the logit of ``outputs[0]`` minus BOS's (numerical); ``held_out`` longer
    inputs are scored too."""

    bos: str
    values: tuple[str, ...]
    max_length: int
    categorical: bool
    outputs: tuple[str, ...]
    held_out: int

    @property
    def n_inputs(self) -> int:
        return space_size(len(self.values), self.max_length)

    def to_json(self) -> dict:
        output = ({"type": "categorical", "tokens": list(self.outputs)} if self.categorical
                  else {"type": "numerical", "token": self.outputs[0]})
        return {"bos": self.bos, "values": list(self.values), "max_length": self.max_length, "output": output,
                "held_out_longer": self.held_out}


def _texts(data: dict, key: str, where: str) -> tuple[str, ...]:
    items = require(data, key, list, where)
    if not items or not all(isinstance(t, str) and t for t in items) or len(set(items)) != len(items):
        raise ChallengeError(f"{where}.{key}: must be distinct, non-empty token texts")
    return tuple(items)


def parse_space(data: dict, where: str) -> SequenceSpace:
    refuse_unknown(data, {"bos", "values", "max_length", "output", "held_out_longer"}, where)
    values = _texts(data, "values", where)
    max_length = require(data, "max_length", int, where)
    if len(values) < 2 or max_length < 1:
        raise ChallengeError(f"{where}: needs at least two values and max_length >= 1")
    if space_size(len(values), max_length) > MAX_INPUTS:
        raise ChallengeError(f"{where}: {space_size(len(values), max_length)} inputs is more than a submission is "
                             f"run on ({MAX_INPUTS}); use fewer values or a shorter max_length")
    output = require(data, "output", dict, where)
    kind = require(output, "type", str, f"{where}.output")
    if kind == "categorical":
        refuse_unknown(output, {"type", "tokens"}, f"{where}.output")
        outputs = _texts(output, "tokens", f"{where}.output")
    elif kind == "numerical":
        refuse_unknown(output, {"type", "token"}, f"{where}.output")
        outputs = (require(output, "token", str, f"{where}.output"),)
    else:
        raise ChallengeError(f"{where}.output.type: 'categorical' or 'numerical', got {kind!r}")
    held_out = require(data, "held_out_longer", int, where)
    return SequenceSpace(require(data, "bos", str, where), values, max_length, kind == "categorical", outputs,
                         held_out)


@dataclass(frozen=True)
class SequenceTruth:
    """The hidden program's output for every input of the space (in :func:`every_input` order) and for the
    held-out longer inputs (vocabulary indices)."""

    outputs: tuple[Output, ...]
    longer_inputs: tuple[tuple[int, ...], ...]
    longer_outputs: tuple[Output, ...]
    description: str = ""


def _outputs(items, where: str) -> tuple[Output, ...]:
    if not isinstance(items, list) or not all(v is None or isinstance(v, (str, int, float)) for v in items):
        raise ChallengeError(f"{where}: must be a list of outputs (text, number or null)")
    return tuple(items)


def parse_answer(data: dict, where: str) -> SequenceTruth:
    refuse_unknown(data, {"outputs", "longer", "description"}, where)
    longer = require(data, "longer", dict, where)
    inputs = require(longer, "inputs", list, f"{where}.longer")
    if not all(isinstance(x, list) and all(isinstance(i, int) for i in x) for x in inputs):
        raise ChallengeError(f"{where}.longer.inputs: must be lists of vocabulary indices")
    outputs = _outputs(require(longer, "outputs", list, f"{where}.longer"), f"{where}.longer.outputs")
    if len(outputs) != len(inputs):
        raise ChallengeError(f"{where}.longer: {len(inputs)} inputs but {len(outputs)} outputs")
    return SequenceTruth(_outputs(require(data, "outputs", list, where), f"{where}.outputs"),
                         tuple(tuple(x) for x in inputs), outputs, str(data.get("description", "")))


def _blind(record: dict[str, Any]) -> dict:
    if record.get("blind") is None:
        raise ChallengeError(f"the program {record.get('program')!r} has no recorded outputs over its input space "
                             f"(more than {MAX_INPUTS} inputs, or built by an older mechwork: rebuild it)")
    return record["blind"]


def space_from_record(record: dict[str, Any]) -> dict:
    """The public space of a checkpoint made by ``mechwork zoo tracr`` (its ``tracr.json``)."""
    categorical = record["categorical"]
    output = ({"type": "categorical", "tokens": record["output_tokens"]} if categorical
              else {"type": "numerical", "token": record["output_tokens"][0]})
    return {"bos": record["bos"], "values": record["vocab"], "max_length": record["max_seq_len"], "output": output,
            "held_out_longer": len(_blind(record)["longer"]["inputs"])}


def answer_from_record(record: dict[str, Any], description: str) -> dict:
    """The hidden answer of the same checkpoint: RASP's outputs, recorded when it was built."""
    return {**_blind(record), "description": description}


# ---- running a submission ----------------------------------------------------------------------------
# argv[2]: the space as JSON; argv[3:]: the held-out inputs, each "i,j,k" (vocabulary indices).
_RUNNER = RUNNER_PREAMBLE + r"""
import itertools, math
space = json.loads(sys.argv[2])
values = space["values"]
fn = namespace.get("program")
if not callable(fn):
    reply(error="the file defines no function program(tokens)")
def last(tokens):
    try:
        result = fn(list(tokens))
    except BaseException as e:
        reply(error=f"program({list(tokens)}) raised {describe(e)}")
    if type(result) not in (list, tuple) or len(result) != len(tokens):
        shown = f"{len(result)} outputs" if type(result) in (list, tuple) else f"a {type(result).__name__!r}"
        reply(error=f"program({list(tokens)}) returned {shown}; it must return a list, one output per token")
    value = result[-1]
    if not (value is None or type(value) in (str, int, float, bool)) or (
            type(value) is float and not math.isfinite(value)) or (type(value) is str and len(value) > LIMIT):
        shown = repr(value)[:80] if type(value) in (str, float) else f"a {type(value).__name__!r}"
        reply(error=f"program({list(tokens)}) returned {shown} at the last position; outputs are token texts "
                    f"(at most {LIMIT} characters), finite numbers or None")
    return value
space_outputs = [last(x) for n in range(1, space["max_length"] + 1) for x in itertools.product(values, repeat=n)]
longer = [last([values[int(i)] for i in arg.split(",")]) for arg in sys.argv[3:]]
reply(outputs={"space": space_outputs, "longer": longer})
""".replace("LIMIT", str(MAX_OUTPUT_TEXT))


@dataclass(frozen=True)
class SequenceRun:
    """What a submitted ``program(tokens)`` gave at the last position of every input, and how it ran."""

    outputs: tuple[Output, ...]
    longer_outputs: tuple[Output, ...]
    isolation: str


def run_sequence_program(path: Path, space: SequenceSpace, longer: tuple[tuple[int, ...], ...] = (), *,
                         timeout: float | int = 30.0, trust: bool = False) -> SequenceRun:
    """Run a submitted ``program(tokens)`` in the sandbox on every input of ``space`` and on ``longer``
    (vocabulary indices); ``trust=True`` runs it unisolated where no sandbox is available."""
    args = [json.dumps({"values": list(space.values), "max_length": space.max_length}),
            *(",".join(map(str, x)) for x in longer)]
    got, isolation = run_for_answer(path, _RUNNER, args, "outputs", timeout=timeout, trust=trust,
                                    unfinished=f"program(tokens) did not finish all {space.n_inputs + len(longer)} "
                                               "inputs", answer_is="one output per input")
    if not isinstance(got, dict) or len(got.get("space", ())) != space.n_inputs or len(
            got.get("longer", ())) != len(longer):
        raise SubmissionError(f"{path}: the program's answer does not cover the inputs")
    return SequenceRun(tuple(got["space"]), tuple(got["longer"]), isolation)


@dataclass(frozen=True)
class SequenceSubmission:
    path: Path
    timeout: float | int
    trust: bool = False  # run unisolated where no sandbox works (the caller's explicit choice)


def read_submission(path: Path, space, *, timeout: float | int = 30.0, trust: bool = False) -> SequenceSubmission:
    """A ``.py`` file defining ``program(tokens)``; it runs when scored (on the hidden held-out inputs too)."""
    if path.suffix != ".py":
        raise SubmissionError(f"{path}: a {KIND} submission is a Python file defining program(tokens)")
    _check_size(path)
    return SequenceSubmission(path, timeout, trust)


# ---- the model's own outputs, and scoring -------------------------------------------------------------
def _ids(vocab: dict[str, int], tokens, where: str) -> list[int]:
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ChallengeError(f"{where}: tokens {missing[:3]} are not in the model's vocabulary")
    return [vocab[t] for t in tokens]


@torch.no_grad()
def model_outputs(model, space: SequenceSpace, where: str = "sequence space") -> list[Output]:
    """The model's output at the last position of every input of the space (categorical: None where the
    best output token does not lead the next by more than ``DECIDED_MARGIN``)."""
    vocab = model.tokenizer.get_vocab()
    bos, = _ids(vocab, [space.bos], f"{where}.bos")
    values = torch.tensor(_ids(vocab, space.values, f"{where}.values"))
    outputs = torch.tensor(_ids(vocab, space.outputs, f"{where}.output"))
    inputs = every_input(len(space.values), space.max_length)
    result: list[Output] = []
    for length in range(1, space.max_length + 1):
        rows: Int[Tensor, "n length"] = torch.tensor([x for x in inputs if len(x) == length])
        for chunk in rows.split(4096):
            tokens = torch.cat([torch.full((len(chunk), 1), bos), values[chunk]], dim=1)
            logits: Float[Tensor, "n vocab"] = model(tokens)[:, -1].double()
            if not space.categorical:
                result += (logits[:, outputs[0]] - logits[:, bos]).tolist()
                continue
            read = logits[:, outputs]
            top2 = read.topk(2, dim=-1).values
            decided = (top2[:, 0] - top2[:, 1] > DECIDED_MARGIN).tolist()
            result += [space.outputs[i] if ok else None for i, ok in zip(read.argmax(-1).tolist(), decided,
                                                                          strict=True)]
    return result


def _checkpoint_outputs(folder: Path, space: SequenceSpace, where: str) -> tuple[Output, ...]:
    """:func:`model_outputs` of the checkpoint in ``folder``, once per process for the same weights file
    (scoring many submissions to one challenge runs the model once)."""
    weights = (folder / "model.safetensors").stat()
    return _cached_outputs(str(folder.resolve()), weights.st_mtime_ns, weights.st_size, space, where)


@functools.lru_cache(maxsize=16)
def _cached_outputs(folder: str, mtime_ns: int, size: int, space: SequenceSpace, where: str) -> tuple[Output, ...]:
    return tuple(model_outputs(load(folder), space, where))


def matches(submitted: object, hidden: Output, categorical: bool) -> bool:
    """Whether a submitted output is the hidden one: None only for None; categorical by text; numerical within
    ``NUMERICAL_TOLERANCE`` (a number, not a bool or a text)."""
    if hidden is None or submitted is None:
        return hidden is None and submitted is None
    if categorical:
        return str(submitted) == str(hidden)
    return type(submitted) in (int, float) and abs(submitted - float(hidden)) <= NUMERICAL_TOLERANCE


def _rate(pairs: list[tuple[object, Output]], categorical: bool) -> float:
    return sum(matches(s, h, categorical) for s, h in pairs) / len(pairs) if pairs else float("nan")


def score_sequence_program(challenge: Challenge, sub: SequenceSubmission | SequenceRun, *,
                           trust: bool = False) -> Score:
    """Exact-match accuracy of the submission's last-position outputs against the hidden program over every
    input where it defines one, on the held-out longer inputs, against the model's own outputs, and the
    model's own accuracy (a check of the challenge: 1 for a tracr model)."""
    truth: SequenceTruth = challenge.hidden(KIND)
    space: SequenceSpace = challenge.space(KIND)
    where = f"challenge {challenge.name!r}: {KIND}"
    if len(truth.outputs) != space.n_inputs:
        raise ChallengeError(f"{where}: the hidden answer has {len(truth.outputs)} outputs, the space "
                             f"{space.n_inputs} inputs")
    if any(len(x) <= space.max_length or not all(0 <= i < len(space.values) for i in x)
           for x in truth.longer_inputs):
        raise ChallengeError(f"{where}: held-out inputs must be longer than {space.max_length} and index values")
    run = sub if isinstance(sub, SequenceRun) else run_sequence_program(
        sub.path, space, truth.longer_inputs, timeout=sub.timeout, trust=trust or sub.trust)
    ours = _checkpoint_outputs(Path(challenge.model_dir()), space, where)
    cat = space.categorical
    defined = [i for i, h in enumerate(truth.outputs) if h is not None]
    undefined = [i for i, h in enumerate(truth.outputs) if h is None]
    longer = [i for i, h in enumerate(truth.longer_outputs) if h is not None]
    numbers = {
        "inputs": space.n_inputs, "defined_inputs": len(defined),
        "accuracy": _rate([(run.outputs[i], truth.outputs[i]) for i in defined], cat),
        "undefined_left_undefined": _rate([(run.outputs[i], None) for i in undefined], cat),
        "held_out_longer_inputs": len(longer),
        "held_out_accuracy": _rate([(run.longer_outputs[i], truth.longer_outputs[i]) for i in longer], cat),
        "agreement_with_model": _rate([(run.outputs[i], ours[i]) for i in defined if ours[i] is not None], cat),
        "model_accuracy": _rate([(ours[i], truth.outputs[i]) for i in defined], cat),
        "exact": all(matches(s, h, cat) for s, h in zip(run.outputs + run.longer_outputs,
                                                         truth.outputs + truth.longer_outputs, strict=True)),
        "isolation": run.isolation,
    }
    summary = (f"{KIND}: {100 * numbers['accuracy']:.2f}% of the {len(defined)} inputs (of {space.n_inputs}, "
               f"lengths 1..{space.max_length}) where the hidden program has an output match it; "
               f"{100 * numbers['held_out_accuracy']:.1f}% of {len(longer)} held-out inputs of lengths "
               f"{space.max_length + 1}..{2 * space.max_length}, longer than the model runs; "
               f"{100 * numbers['agreement_with_model']:.2f}% agreement with the model's own outputs"
               + (" (exact: every output, undefined ones included, is the program's)" if numbers["exact"] else ""))
    return Score(challenge.name, KIND, numbers, summary)


STARTER = """\
with open('challenge.json') as public:
    space = next(q['space'] for q in json.load(public)['questions'] if q['kind'] == 'sequence-program')
vocab = model.tokenizer.get_vocab()
out = space['output']

def run(tokens):
    '''The model's output at every position of BOS + tokens (categorical: the best output token, None on a tie).'''
    logits = model(torch.tensor([[vocab[space['bos']], *(vocab[t] for t in tokens)]]))[0, 1:]
    if out['type'] == 'categorical':
        read = logits[:, [vocab[t] for t in out['tokens']]]
        best = read.topk(min(2, read.shape[-1])).values
        return [out['tokens'][i] if len(b) < 2 or b[0] - b[1] > 0.01 else None
                for i, b in zip(read.argmax(-1).tolist(), best)]
    return (logits[:, vocab[out['token']]] - logits[:, vocab[space['bos']]]).tolist()

example = [space['values'][i % len(space['values'])] for i in range(space['max_length'])]
print(example, '->', run(example))"""

register_kind(ChallengeKind(
    name=KIND, summary="recover the program a model computes on token sequences (e.g. a tracr-compiled model)",
    submit="a Python file defining `program(tokens)`: a list of token texts in, a list with one output per token "
           "out (token text or number; None where the program has no output)",
    parse_space=parse_space, parse_answer=parse_answer, claims=lambda p: p.suffix == ".py", read=read_submission,
    score=score_sequence_program, starter=STARTER))


def challenge_text(space: SequenceSpace | None) -> str:
    """The public description of a blind compiled-program challenge (``None``: before its model is built)."""
    if space is None:
        inputs, output, held = "Inputs are BOS and then tokens of the model's vocabulary", "", "held-out"
    else:
        inputs = (f"Inputs are {space.bos!r} and then 1 to {space.max_length} tokens, each one of "
                  f"{', '.join(map(repr, space.values))} ({space.n_inputs} inputs)")
        output = (f" (one of {', '.join(map(repr, space.outputs))}: the output token with the largest logit; when "
                  "they tie, the program has no output there, None)" if space.categorical else
                  f" (a number: the logit of {space.outputs[0]!r} minus the logit of {space.bos!r})")
        held = f"{space.held_out} held-out inputs of {space.max_length + 1} to {2 * space.max_length} tokens"
    return (f"Recover the program. The model was compiled by tracr from a hidden RASP program (it was not trained). "
            f"{inputs}. At every position the model outputs the program's value on the tokens so far{output}. "
            "Submit a Python file defining program(tokens): a list of token texts in, a list with one output per "
            "token out (token text or number; None where the program has no output). It runs in a sandbox on "
            f"every input, and on {held}, longer than the model can run: there a table of the model's outputs "
            "cannot answer, the program can. Scored by exact-match accuracy of the output at the last position "
            "against the hidden program.")
