"""Posing new challenges: of any registered kind from a model and JSON questions
(:func:`create_challenge`), from any labelling function or label table, from a model plus a
ground-truth circuit file, or from a RASP program file compiled by tracr (recover the program, blind).
Each becomes a challenge pack folder (see ``_registry``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .._nodes import edge_nodes
from ..models import resolve_spec
from ..models._tokenizer import word_level_tokenizer
from ..models.zoo import TaskData, pairs
from ..models.zoo._training import Architecture, TrainingRecipe
from ..models.zoo._writer import save_checkpoint
from ._kinds import pairs_space
from ._registry import PAIRS_TEXT, load_pack, write_pack
from ._sequence import KIND as SEQUENCE_KIND
from ._sequence import answer_from_record, challenge_text, parse_space, space_from_record
from ._types import Challenge, ChallengeError


def _checkpoint(model: str | os.PathLike) -> Path:
    src = Path(resolve_spec(model))
    if not src.is_dir():
        raise ChallengeError(f"{os.fspath(model)!r}: a challenge needs a local checkpoint folder or a zoo model")
    return src


def create_challenge(name: str, model: str | os.PathLike, folder: str | os.PathLike, *, description: str,
                     questions: Sequence[dict], title: str | None = None, task: TaskData | dict | None = None,
                     facts: dict | None = None) -> Challenge:
    """A challenge of any registered kinds: ``questions`` are ``{"kind": NAME, "space": {...}, "answer":
    {...}}`` (JSON data; each kind checks its space and answer), ``model`` a checkpoint folder or zoo
    name, ``task`` the public prompts where there are any. The answers go into the pack's hidden
    ``answer.json``; everything else, spaces included, is public."""
    asked = []
    answer = {}
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or "answer" not in q:
            raise ChallengeError(f"challenge {name!r}: questions[{i}] needs 'kind', 'space' and 'answer'")
        asked.append({k: v for k, v in q.items() if k != "answer"})
        answer[q.get("kind")] = q["answer"]
    if isinstance(task, TaskData):
        task = {**{k: getattr(task, k).tolist() for k in ("clean", "corrupted", "answers", "wrong")},
                "position": task.position}
    public = {"name": name, "title": title or name, "description": description, "questions": asked,
              **({"task": task} if task else {}), **({"model_facts": facts} if facts else {})}
    write_pack(Path(folder), public, answer, _checkpoint(model))
    return load_pack(folder)


def create_program_challenge(name: str, labelling: pairs.Labelling, folder: str | os.PathLike, *,
                             title: str | None = None, hint: str = "", arch: Architecture = pairs.DEFAULT_ARCH,
                             recipe: TrainingRecipe = pairs.DEFAULT_RECIPE, answer_text: str = "") -> Challenge:
    """Train a ``[a, b, =]`` model on half the inputs labelled by ``labelling`` (a function of (a, b) or a
    113 x 113 table) and write it as a challenge pack: recover the labelling program."""
    table = pairs.label_table(labelling)
    result = pairs.train_pairs_model(table, arch=arch, recipe=recipe)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(result.model, word_level_tokenizer(pairs.VOCAB, "<bos>"), Path(tmp))
        return create_challenge(
            name, tmp, folder, title=title or f"{name} — recover the labelling program",
            description=PAIRS_TEXT.format(extra=f" {hint}" if hint else ""),
            questions=[{"kind": "program", "space": pairs_space(),
                        "answer": {"table": table.tolist(), "description": answer_text}}],
            facts={"train_accuracy": round(result.train_accuracy, 4), "test_accuracy": round(result.test_accuracy, 4)})


def create_circuit_challenge(name: str, model: str, circuit_file: str | os.PathLike, folder: str | os.PathLike, *,
                             task_text: str, title: str | None = None) -> Challenge:
    """A find-the-circuit challenge from a model (zoo name, local checkpoint) and a circuit file whose
    selected edges are the answer; the circuit file's prompts become the public task."""
    from ..discovery import Circuit

    circuit = Circuit.load(circuit_file)
    edges = sorted(e.split("@")[0] for e in circuit.selected)
    nodes = sorted({n for e in edges for n in edge_nodes(e)} - {"input", "logits"})
    p = circuit.task["prompts"]
    return create_challenge(
        name, model, folder, title=title or f"{name} — find the circuit",
        description=f"Find the circuit. Task: {task_text} The prompts are in task.json; the metric is "
                    f"{circuit.task['metric']} at position {circuit.task['position']}.",
        questions=[{"kind": "circuit", "space": {}, "answer": {"nodes": nodes, "edges": edges}}],
        task={**{k: p[k] for k in ("clean", "corrupted", "answers", "wrong")}, "position": circuit.task["position"]})


def create_tracr_challenge(name: str, program: str | os.PathLike, folder: str | os.PathLike, *,
                           title: str | None = None, n_check: int = 1000) -> Challenge:
    """Compile a RASP program file (as ``mechwork zoo tracr`` does: verified against tracr's own model on
    ``n_check`` inputs) and write it as a blind pack: recover the program from the model. Only the
    checkpoint's weights and tokenizer go into the pack's model; RASP's outputs over the whole input space
    (and held-out longer inputs) are the hidden answer, the program's source its hidden description. The
    pack says nothing of the program, so give it a name that does not either."""
    from ..models.zoo._tracr import import_program, read_record

    with tempfile.TemporaryDirectory() as tmp:
        import_program(program, Path(tmp) / "model", n_check=n_check)
        record = read_record(Path(tmp) / "model")
        space = space_from_record(record)
        return create_challenge(
            name, Path(tmp) / "model", folder, title=title or f"{name} — recover the compiled program",
            description=challenge_text(parse_space(space, f"challenge {name!r}")),
            questions=[{"kind": SEQUENCE_KIND, "space": space, "answer": answer_from_record(record, record["source"])}])
