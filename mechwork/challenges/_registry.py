"""Built-in challenges (from the zoo) and user-made challenge packs on disk.

A pack is a folder: ``challenge.json`` (the public part, schema ``mechwork.challenge``),
``answer.json`` (the hidden answer; never exported) and ``model/`` (a Hugging Face checkpoint).
"""

from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path

import torch

from .._io import atomic_write_json, read_json
from ..models import zoo
from ..models.zoo import CircuitGroundTruth, LabellingGroundTruth, TaskData, TriggerGroundTruth
from ._types import ASKS, Challenge, ChallengeError

SCHEMA, VERSION = "mechwork.challenge", 1
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
    for name in ("induction", "lookup"):
        entry = zoo.get_entry(name)
        out[name] = Challenge(
            name=name, title=f"zoo:{name} — find the circuit",
            description=_CIRCUIT_TEXT.format(task=_DESCRIPTIONS[name]),
            asks=("circuit",), model_dir=_zoo_dir(name), answer=lambda e=entry: (e.ground_truth(),),
            public_task=entry.task.data,
        )
    pairs_entry, trojan_entry = zoo.get_entry("pairs"), zoo.get_entry("trojan")
    out["pairs"] = Challenge(
        name="pairs", title="zoo:pairs — recover the labelling program", description=PAIRS_TEXT.format(extra=""),
        asks=("program",), model_dir=_zoo_dir("pairs"), answer=lambda: (pairs_entry.ground_truth(),),
        input_space="pairs",
    )
    out["trojan"] = Challenge(
        name="trojan", title="zoo:trojan — find the backdoor trigger", description=TROJAN_TEXT,
        asks=("trigger",), model_dir=_zoo_dir("trojan"), answer=lambda: (trojan_entry.ground_truth(),),
        input_space="trojan",
    )
    return out


def builtin_names() -> list[str]:
    return sorted(_builtin())


def get_challenge(name: str | os.PathLike) -> Challenge:
    """A built-in challenge by name, or a challenge pack by its folder."""
    builtins = _builtin()
    if str(name) in builtins:
        return builtins[str(name)]
    path = Path(name)
    if (path / "challenge.json").is_file():
        return load_pack(path)
    near = difflib.get_close_matches(str(name), list(builtins), n=2)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise ChallengeError(f"no challenge {str(name)!r}: not a built-in ({', '.join(sorted(builtins))}) and not a "
                         f"folder holding challenge.json.{hint}")


# ---- packs ---------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    data = read_json(path, ChallengeError,
                     f"{path}: missing (a challenge pack needs challenge.json, answer.json, model/)")
    if not isinstance(data, dict):
        raise ChallengeError(f"{path}: the top level must be a JSON object")
    return data


def _pack_task(task: dict | None):
    if not task:
        return None
    tensors = {k: torch.tensor(task[k]) for k in ("clean", "corrupted", "answers", "wrong")}

    def make(n: int, seed: int = 0) -> TaskData:  # the pack's prompts are fixed: n and seed cannot add more
        return TaskData(**tensors, position=task.get("position", -1))

    return make


def load_pack(folder: str | os.PathLike) -> Challenge:
    folder = Path(folder)
    public = _read_json(folder / "challenge.json")
    if public.get("schema") == "mechwork.challenge-public":
        raise ChallengeError(f"{folder} is a blind export (what participants see): it holds no answer to score "
                             "against; score with the built-in name or the organiser's challenge pack")
    if public.get("schema") != SCHEMA or not isinstance(public.get("version"), int):
        raise ChallengeError(f"{folder / 'challenge.json'}: 'schema' must be {SCHEMA!r} with an integer 'version'")
    if public["version"] > VERSION:
        raise ChallengeError(f"{folder / 'challenge.json'}: version {public['version']} is newer than this mechwork "
                             f"reads ({VERSION}); upgrade mechwork")
    for key in ("name", "title", "description", "asks"):
        if key not in public:
            raise ChallengeError(f"{folder / 'challenge.json'}: missing key {key!r}")

    def answer():
        data = _read_json(folder / "answer.json")
        out = []
        if "program" in data:
            out.append(LabellingGroundTruth(table=torch.tensor(data["program"]["table"]),
                                            description=data["program"].get("description", "")))
        if "circuit" in data:
            c = data["circuit"]
            out.append(CircuitGroundTruth(nodes=frozenset(c["nodes"]), edges=frozenset(c["edges"]),
                                          structural_edges=frozenset(c.get("structural_edges", []))))
        if "trigger" in data:
            out.append(TriggerGroundTruth(trigger=tuple(data["trigger"]["trigger"]),
                                          behaviour=data["trigger"].get("behaviour", "")))
        return tuple(out)

    return Challenge(name=public["name"], title=public["title"], description=public["description"],
                     asks=tuple(public["asks"]), model_dir=lambda: folder / "model", answer=answer,
                     public_task=_pack_task(public.get("task")), input_space=public.get("input_space"))


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
    unknown = [a for a in public["asks"] if a not in ASKS]
    if unknown:
        raise ChallengeError(f"asks must be some of {ASKS}, got {unknown}")
    copy_model(model_src, folder / "model")
    atomic_write_json(folder / "answer.json", answer, indent=None)
    atomic_write_json(folder / "challenge.json", {"schema": SCHEMA, "version": VERSION, **public})
    return folder
