"""Posing new challenges: from any labelling function or label table, or from a model plus a
ground-truth circuit file. Each becomes a challenge pack folder (see ``_registry``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .._nodes import edge_nodes
from ..models import resolve_spec
from ..models._tokenizer import word_level_tokenizer
from ..models.zoo import pairs
from ..models.zoo._training import Architecture, TrainingRecipe
from ..models.zoo._writer import save_checkpoint
from ._registry import PAIRS_TEXT, load_pack, write_pack
from ._types import Challenge, ChallengeError


def create_program_challenge(name: str, labelling: pairs.Labelling, folder: str | os.PathLike, *,
                             title: str | None = None, hint: str = "", arch: Architecture = pairs.DEFAULT_ARCH,
                             recipe: TrainingRecipe = pairs.DEFAULT_RECIPE, answer_text: str = "") -> Challenge:
    """Train a ``[a, b, =]`` model on half the inputs labelled by ``labelling`` (a function of (a, b) or a
    113 x 113 table) and write it as a challenge pack: recover the labelling program."""
    table = pairs.label_table(labelling)
    result = pairs.train_pairs_model(table, arch=arch, recipe=recipe)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(result.model, word_level_tokenizer(pairs.VOCAB, "<bos>"), Path(tmp))
        public = {"name": name, "title": title or f"{name} — recover the labelling program",
                  "description": PAIRS_TEXT.format(extra=f" {hint}" if hint else ""), "asks": ["program"],
                  "input_space": "pairs",
                  "model_facts": {"train_accuracy": round(result.train_accuracy, 4),
                                  "test_accuracy": round(result.test_accuracy, 4)}}
        write_pack(Path(folder), public, {"program": {"table": table.tolist(), "description": answer_text}},
                   Path(tmp))
    return load_pack(folder)


def create_circuit_challenge(name: str, model: str, circuit_file: str | os.PathLike, folder: str | os.PathLike, *,
                             task_text: str, title: str | None = None) -> Challenge:
    """A find-the-circuit challenge from a model (zoo name, local checkpoint) and a circuit file whose
    selected edges are the answer; the circuit file's prompts become the public task."""
    from ..discovery import Circuit

    circuit = Circuit.load(circuit_file)
    src = Path(resolve_spec(model))
    if not src.is_dir():
        raise ChallengeError(f"{model!r}: a circuit challenge needs a local checkpoint folder or a zoo model")
    edges = sorted(e.split("@")[0] for e in circuit.selected)
    nodes = sorted({n for e in edges for n in edge_nodes(e)} - {"input", "logits"})
    p = circuit.task["prompts"]
    public = {"name": name, "title": title or f"{name} — find the circuit",
              "description": f"Find the circuit. Task: {task_text} The prompts are in task.json; the metric is "
                             f"{circuit.task['metric']} at position {circuit.task['position']}.",
              "asks": ["circuit"],
              "task": {**{k: p[k] for k in ("clean", "corrupted", "answers", "wrong")},
                       "position": circuit.task["position"]}}
    write_pack(Path(folder), public, {"circuit": {"nodes": nodes, "edges": edges}}, src)
    return load_pack(folder)
