"""Blind export: only what a participant may see — the weights (safetensors) and tokenizer, the public
description and each question's input space (its kind's JSON), the public task prompts where there
are any, and a starter notebook. The hidden answer is never read here (``Challenge.answer`` is not
called), and only whitelisted checkpoint files are copied (a zoo build's ``mechwork.json`` records
its recipe, which can name the answer)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from .._io import atomic_write_json, atomic_write_text
from ._kinds import get_kind
from ._registry import copy_model, get_challenge
from ._types import Challenge


def _readme(challenge: Challenge, has_task: bool) -> str:
    submit = "\n".join(f"- {ask}: {get_kind(ask).submit}" for ask in challenge.asks)
    task = ("\n`task.json` holds the task's prompts (token ids): clean, corrupted, answers, wrong, position.\n"
            if has_task else "")
    return (f"# {challenge.title}\n\n{challenge.description}\n\n## Files\n\n`model/` is an ordinary Hugging Face "
            f"checkpoint (safetensors): `mechwork.load('model')` boots it through TransformerLens.\n{task}"
            f"`starter.ipynb` loads it and runs a first look.\n\n## Submitting\n\n{submit}\n\nThe organiser scores "
            f"it with `mechwork challenge score {challenge.name} SUBMISSION`.\n")


def _starter(challenge: Challenge, has_task: bool) -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(f"# {challenge.title}\n\n{challenge.description}"),
        new_code_cell("import json, os\nos.environ.setdefault('HF_HUB_OFFLINE', '1')\nimport torch\nimport mechwork\n"
                      "from mechwork import viz\n\nmodel = mechwork.load('model')\nprint(model.cfg.n_layers, "
                      "'layers,', model.cfg.n_heads, 'heads; vocabulary:', model.cfg.d_vocab)"),
    ]
    if has_task:
        cells.append(new_code_cell(
            "task = json.load(open('task.json'))\nclean, corrupted = torch.tensor(task['clean']), "
            "torch.tensor(task['corrupted'])\nfrom mechwork.hooks import activation_patching\n"
            "from mechwork.metrics import LogitDiff\nmetric = LogitDiff(position=task['position'], "
            "answers=torch.tensor(task['answers']), wrong=torch.tensor(task['wrong']))\n"
            "viz.patching_heatmap(activation_patching(model, clean, corrupted, metric, 'z').normalized())"))
    else:
        cells.append(new_code_cell(
            "tokens = [model.tokenizer.convert_ids_to_tokens(i) for i in range(model.cfg.d_vocab)]\nprint(tokens)"))
    cells += [new_code_cell(get_kind(ask).starter) for ask in challenge.asks if get_kind(ask).starter]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def export_challenge(name: str | os.PathLike, folder: str | os.PathLike, *, n_prompts: int = 32,
                     seed: int = 0) -> list[Path]:
    """Write the participant's view of a challenge into ``folder``; returns the files written."""
    challenge = get_challenge(name)
    out = Path(folder)
    copy_model(Path(challenge.model_dir()), out / "model")
    files = sorted((out / "model").iterdir())
    has_task = challenge.public_task is not None
    if has_task:
        data = challenge.public_task(n_prompts, seed)
        task = {k: getattr(data, k).tolist() for k in ("clean", "corrupted", "answers", "wrong")}
        files.append(atomic_write_json(out / "task.json", {**task, "position": data.position}, indent=None))
    public = {"schema": "mechwork.challenge-public", "version": 2, "name": challenge.name,
              "title": challenge.title, "description": challenge.description, "asks": list(challenge.asks),
              "questions": [{"kind": q.kind, "space": q.spec} for q in challenge.questions],
              "model": "model", "task": "task.json" if has_task else None}
    files.append(atomic_write_json(out / "challenge.json", public))
    files.append(atomic_write_text(out / "README.md", _readme(challenge, has_task)))
    files.append(atomic_write_text(out / "starter.ipynb", nbformat.writes(_starter(challenge, has_task))))
    return files
