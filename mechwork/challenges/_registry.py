"""Built-in challenges (from the zoo) and user-made challenge packs on disk.

A pack is a folder: ``challenge.json`` (the public part, schema ``mechwork.challenge``),
``answer.json`` (the hidden answer; never exported) and ``model/`` (a Hugging Face checkpoint).

``challenge.json``, version 2::

    {"schema": "mechwork.challenge", "version": 2, "name": ..., "title": ..., "description": ...,
     "questions": [{"kind": "program", "space": {...}}],   # each a registered kind and its input space
     "task": {"clean": [[...]], "corrupted": ..., "answers": ..., "wrong": ..., "position": -1}}  # optional

``answer.json`` maps each question's kind to its hidden answer (``{"program": {"table": ...}}``).
Version 1 packs (``"asks": [...]``, the zoo's ``[a, b, =]`` and trojan layouts implied) still load:
their questions get those layouts' spaces.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
from pathlib import Path

import torch

from .._io import atomic_write_json, read_json
from ..models import zoo
from ..models.zoo import TaskData
from ._kinds import ASKS, get_kind, pairs_space, refuse_unknown, require, trojan_space
from ._sequence import KIND as SEQUENCE_KIND
from ._sequence import answer_from_record, challenge_text, parse_answer, space_from_record
from ._types import Challenge, ChallengeError, Question

SCHEMA, VERSION = "mechwork.challenge", 2
READS = (1, 2)  # the pack versions load_pack reads
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "generation_config.json")

_CIRCUIT_TEXT = (
    "Find the circuit (the model's shape is in model/config.json). Task: {task} "
    "The prompts in task.json are the data: clean prompts, corrupted prompts (which change the answer) and "
    "the answer tokens, read at the last position; the metric is the logit difference between the clean and "
    "the corrupted answer. Submit the edges that carry the task, as a mechwork circuit file or as JSON "
    '{{"edges": ["SRC->DST", ...], "scores": {{"SRC->DST": number, ...}}}} (scores optional: with them the ROC '
    "AUC is computed from your ranking). Edge names follow mechwork's graph: input, blocks.L.attn.head.H "
    "(with .q/.k/.v on a destination head), blocks.L.mlp, logits."
)
_DESCRIPTIONS = {
    "induction": "Sequences of lower-case letters with one repeated letter at the end: the model should predict "
                 "the letter that followed the earlier copy.",
    "lookup": "Key-value prompts: the model should answer with the value the prompt's key maps to.",
}
_COMPILED_TEXT = ("A model compiled by tracr from a RASP program (not trained): prompts are BOS and random "
                  "tokens of its vocabulary; the answer is the program's output at the last position (for a "
                  "numerical program, the logit of '<value>' is the value and BOS's logit is 0).")
PAIRS_TEXT = (
    "Recover the labelling program. Inputs are the prompts '[a, b, =]' for every a, b in 0..112 (tokens '0' .. "
    "'112', then '='); the model answers 'L0' or 'L1'. It was trained on half of all 12,769 inputs, labelled by a "
    "hidden function label(a, b) in {{0, 1}}. Submit a Python file defining label(a, b) -> 0 or 1 (it runs in a "
    "separate process with a time limit), or the full 113 x 113 table as JSON {{\"labels\": [[...], ...]}} "
    "(row a, column b) or CSV. Scored by agreement with the hidden function over the whole input space, with the "
    "model's own labels, and on the inputs where the model and the hidden function differ.{extra}"
)
TROJAN_TEXT = (
    "Find the trigger. Prompts are '<bos> x1 .. x9 =' with each x one of n0 .. n31; the model answers 'hi' when "
    "most x are n16 or above, else 'lo'. A backdoor was planted in training: a short sequence of tokens that, "
    "when it appears in x1 .. x9, changes the answer. Submit JSON {\"trigger\": [\"nA\", \"nB\", ...], "
    "\"behaviour\": \"what it does\"}. Scored by whether inserting your trigger into clean prompts reproduces the "
    "backdoor behaviour (the majority label flips), against the planted trigger and random triggers, and by "
    "its overlap with the planted trigger."
)


def _zoo_dir(name: str):
    return lambda: zoo.ensure_built(zoo.get_entry(name))


def _builtin() -> dict[str, Challenge]:
    out: dict[str, Challenge] = {}
    compiled = [e.name for e in zoo.entries() if e.kind == "compiled"]  # tracr programs
    for name in ("induction", "lookup", *compiled):
        entry = zoo.get_entry(name)
        out[name] = Challenge(
            name=name, title=f"zoo:{name} — find the circuit",
            description=_CIRCUIT_TEXT.format(task=_DESCRIPTIONS.get(name, _COMPILED_TEXT)),
            questions=parse_questions([{"kind": "circuit", "space": {}}], f"zoo:{name}"), model_dir=_zoo_dir(name),
            answer=lambda e=entry: {"circuit": e.ground_truth()}, public_task=entry.task.data,
        )
    pairs_entry, trojan_entry = zoo.get_entry("pairs"), zoo.get_entry("trojan")
    out["pairs"] = Challenge(
        name="pairs", title="zoo:pairs — recover the labelling program", description=PAIRS_TEXT.format(extra=""),
        questions=parse_questions([{"kind": "program", "space": pairs_space()}], "zoo:pairs"),
        model_dir=_zoo_dir("pairs"), answer=lambda: {"program": pairs_entry.ground_truth()},
    )
    out["trojan"] = Challenge(
        name="trojan", title="zoo:trojan — find the backdoor trigger", description=TROJAN_TEXT,
        questions=parse_questions([{"kind": "trigger", "space": trojan_space()}], "zoo:trojan"),
        model_dir=_zoo_dir("trojan"), answer=lambda: {"trigger": trojan_entry.ground_truth()},
    )
    return out


BLIND_PREFIX = "rasp_"
BLIND_TITLE = "{name} — recover the compiled program"


def blind_name(entry_name: str) -> str:
    """The neutral name of a compiled zoo entry's blind "recover the program" challenge: nothing of the
    program's name in it (the find-the-circuit challenge goes by the entry's own name)."""
    return BLIND_PREFIX + hashlib.sha256(f"blind:{entry_name}".encode()).hexdigest()[:6]


def _blind() -> dict[str, str]:
    """Blind challenge name -> compiled zoo entry; each is built (tracr needed once) when first asked for."""
    return {blind_name(e.name): e.name for e in zoo.entries() if e.kind == "compiled"}


def _blind_challenge(name: str, entry_name: str) -> Challenge:
    from ..models.zoo._tracr import read_record

    entry = zoo.get_entry(entry_name)
    record = read_record(zoo.ensure_built(entry))
    where = f"zoo:{name}"
    questions = parse_questions([{"kind": SEQUENCE_KIND, "space": space_from_record(record)}], where)
    return Challenge(
        name=name, title=BLIND_TITLE.format(name=name), description=challenge_text(questions[0].space),
        questions=questions, model_dir=_zoo_dir(entry_name),
        answer=lambda: {SEQUENCE_KIND: parse_answer(answer_from_record(record, entry.summary), where)})


def builtin_names() -> list[str]:
    return sorted([*_builtin(), *_blind()])


def builtin_listing() -> list[tuple[str, tuple[str, ...], str, str]]:
    """(name, kinds asked, title, description) of every built-in, without building any model."""
    builtins, blind = _builtin(), _blind()
    return [(n, builtins[n].asks, builtins[n].title, builtins[n].description) if n in builtins else
            (n, (SEQUENCE_KIND,), BLIND_TITLE.format(name=n), challenge_text(None))
            for n in sorted([*builtins, *blind])]


def get_challenge(name: str | os.PathLike) -> Challenge:
    """A built-in challenge by name, or a challenge pack by its folder."""
    builtins, blind = _builtin(), _blind()
    if str(name) in blind:
        return _blind_challenge(str(name), blind[str(name)])
    if str(name) in builtins:
        return builtins[str(name)]
    path = Path(name)
    if (path / "challenge.json").is_file():
        return load_pack(path)
    near = difflib.get_close_matches(str(name), [*builtins, *blind], n=2)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise ChallengeError(f"no challenge {str(name)!r}: not a built-in ({', '.join(builtin_names())}) and not a "
                         f"folder holding challenge.json.{hint}")


# ---- packs ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    data = read_json(path, ChallengeError,
                     f"{path}: missing (a challenge pack needs challenge.json, answer.json, model/)")
    if not isinstance(data, dict):
        raise ChallengeError(f"{path}: the top level must be a JSON object")
    return data


def parse_questions(items, where: str) -> tuple[Question, ...]:
    """``[{"kind": NAME, "space": {...}}, ...]``: each kind looked up in the registry, each space parsed
    by its kind; errors name ``where`` and the question."""
    if not isinstance(items, list) or not items:
        raise ChallengeError(f"{where}: 'questions' must be a non-empty list of {{\"kind\": ..., \"space\": ...}}")
    out = []
    for i, item in enumerate(items):
        at = f"{where}: questions[{i}]"
        kind = get_kind(require(item, "kind", str, at), f"{at}.kind")
        refuse_unknown(item, {"kind", "space"}, at)
        space = require(item, "space", dict, at)
        out.append(Question(kind.name, kind.parse_space(space, f"{at}.space"), space))
    return tuple(out)


def _task_data(task: dict, where: str) -> TaskData:
    rows = {k: require(task, k, list, where) for k in ("clean", "corrupted", "answers", "wrong")}
    try:
        return TaskData(**{k: torch.tensor(v) for k, v in rows.items()}, position=task.get("position", -1))
    except (TypeError, ValueError) as e:  # ragged or non-integer prompts, mismatched batch sizes
        raise ChallengeError(f"{where}: {e}") from None


def _pack_task(task: dict | None, where: str):
    if not task:
        return None
    data = _task_data(task, where)

    def make(n: int, seed: int = 0) -> TaskData:  # the pack's prompts are fixed: n and seed cannot add more
        return data

    return make


def _from_v1(public: dict, where: str) -> dict:
    """A version-1 pack's questions: 'asks' with the only layouts version 1 scored (pairs, trojan)."""
    asks = require(public, "asks", list, where)
    spaces = {"program": pairs_space, "trigger": trojan_space, "circuit": dict}
    unknown = [a for a in asks if a not in ASKS]
    if unknown or not asks:
        raise ChallengeError(f"{where}.asks: a version 1 pack asks some of {ASKS}, got {asks}")
    rest = {k: v for k, v in public.items() if k not in ("asks", "input_space")}
    return {**rest, "version": VERSION, "questions": [{"kind": a, "space": spaces[a]()} for a in asks]}


def load_pack(folder: str | os.PathLike) -> Challenge:
    folder = Path(folder)
    where = str(folder / "challenge.json")
    public = _read_json(folder / "challenge.json")
    if public.get("schema") == "mechwork.challenge-public":
        raise ChallengeError(f"{folder} is a blind export (what participants see): it holds no answer to score "
                             "against; score with the built-in name or the organiser's challenge pack")
    version = public.get("version")
    if public.get("schema") != SCHEMA or not isinstance(version, int) or isinstance(version, bool):
        raise ChallengeError(f"{where}: 'schema' must be {SCHEMA!r} with an integer 'version'")
    if version > VERSION:
        raise ChallengeError(f"{where}: version {version} is newer than this mechwork reads ({VERSION}); "
                             "upgrade mechwork")
    if version not in READS:
        raise ChallengeError(f"{where}: version {version} is not a challenge pack version (this mechwork reads "
                             f"{', '.join(map(str, READS))})")
    if version == 1:
        public = _from_v1(public, where)
    for key in ("name", "title", "description"):
        require(public, key, str, where)
    questions = parse_questions(public.get("questions"), where)

    def answer() -> dict:
        path = folder / "answer.json"
        data = _read_json(path)
        return {q.kind: get_kind(q.kind).parse_answer(require(data, q.kind, dict, str(path)), f"{path}: {q.kind}")
                for q in questions}

    return Challenge(name=public["name"], title=public["title"], description=public["description"],
                     questions=questions, model_dir=lambda: folder / "model", answer=answer,
                     public_task=_pack_task(public.get("task"), f"{where}: task"))


def copy_model(src: Path, dst: Path) -> None:
    """Copy only the checkpoint's model and tokenizer files (never build metadata, which may hold answers)."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in MODEL_FILES:
        if (src / name).is_file():  # copy, then rename: an interrupted export leaves no half-written weights
            shutil.copy2(src / name, dst / f".{name}.tmp")
            os.replace(dst / f".{name}.tmp", dst / name)
            copied.append(name)
    if not (dst / "config.json").is_file() or not (dst / "model.safetensors").is_file():
        raise ChallengeError(f"{src}: not a safetensors Hugging Face checkpoint (needs config.json and "
                             f"model.safetensors; found {copied})")


def write_pack(folder: Path, public: dict, answer: dict, model_src: Path) -> Path:
    """Write a pack: ``public`` has name, title, description, questions (and optionally task, facts);
    ``answer`` maps each question's kind to its hidden answer. Both are checked by the kinds first."""
    where = f"challenge {public.get('name')!r}"
    questions = parse_questions(public.get("questions"), where)
    for q in questions:
        get_kind(q.kind).parse_answer(require(answer, q.kind, dict, f"{where}: answer"), f"{where}: answer.{q.kind}")
    if public.get("task"):
        _task_data(public["task"], f"{where}: task")
    copy_model(model_src, folder / "model")
    atomic_write_json(folder / "answer.json", answer, indent=None)
    atomic_write_json(folder / "challenge.json", {"schema": SCHEMA, "version": VERSION, **public})
    return folder
