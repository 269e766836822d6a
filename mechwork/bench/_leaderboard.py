"""The method leaderboard: every registered discovery method on every zoo model with a planted circuit.

Each cell (model x method) is computed once and saved atomically as ``DIR/cells/MODEL__METHOD.json``;
a rerun reads finished cells instead of recomputing them, so an interrupted run resumes. Scores are
deterministic for a seed (prompts come from the seeded task; the methods use no randomness).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_csv, atomic_write_json, atomic_write_text

COLUMNS = ("model", "method", "edge_roc_auc", "node_roc_auc", "precision_at_size", "cpr", "cmd", "faithfulness",
           "n_edges", "seconds")


@dataclass(frozen=True)
class BenchSettings:
    n_prompts: int = 32
    seed: int = 0
    metric: str = "logit_diff"
    ablation: str = "corrupted"
    batch_size: int | None = None  # prompts run at once; not part of the key (results do not depend on it)

    def key(self) -> dict:
        return {"n_prompts": self.n_prompts, "seed": self.seed, "metric": self.metric, "ablation": self.ablation}


def circuit_models() -> list[str]:
    from ..models import zoo

    return [e.name for e in zoo.entries() if e.ground_truth_kind == "circuit"]


def _cell_path(out: Path, model_name: str, method: str) -> Path:
    return out / "cells" / f"{model_name}__{method}.json"


def finished_cell(out: Path, model_name: str, method: str, settings: BenchSettings) -> dict | None:
    """The cell a previous run saved with these settings, or None."""
    path = _cell_path(out, model_name, method)
    if path.exists():
        cell = json.loads(path.read_text())
        if cell.get("settings") == settings.key():
            return cell
    return None


def compute_cell(context, payload: tuple[str, str, BenchSettings]) -> dict:
    """One leaderboard cell (a unit of work: runs in-process or on a worker, which loads the model once).
    Returns the cell and its circuit as data; the caller writes the files."""
    from ..discovery import find_circuit
    from ..models import zoo

    model_name, method, settings = payload
    entry = zoo.get_entry(model_name)
    model = context.model(f"zoo:{model_name}")
    data = entry.task.data(settings.n_prompts, seed=settings.seed)
    circuit = find_circuit(model, data, method, metric=settings.metric, ablation=settings.ablation,
                           truth=entry.ground_truth(), task_name=model_name, seed=settings.seed,
                           batch_size=settings.batch_size)
    g, f = circuit.ground_truth, circuit.faithfulness
    cell = {"settings": settings.key(), "model": model_name, "method": method,
            "edge_roc_auc": g["edge_roc_auc"], "node_roc_auc": g["node_roc_auc"],
            "precision_at_size": g["precision_at_size"], "cpr": f["curve"]["cpr"], "cmd": f["curve"]["cmd"],
            "faithfulness": f["value"], "n_edges": circuit.n_edges, "seconds": circuit.provenance["seconds"]}
    return {"cell": cell, "circuit": circuit.to_dict()}


def save_cell(out: Path, result: dict) -> dict:
    """Write a computed cell: its circuit first, then the cell file that marks it finished."""
    cell = result["cell"]
    atomic_write_json(out / "circuits" / f"{cell['model']}__{cell['method']}.json", result["circuit"], allow_nan=True)
    atomic_write_json(_cell_path(out, cell["model"], cell["method"]), cell)
    return cell


def run_cell(model_name: str, method: str, settings: BenchSettings, out: Path) -> dict:
    from ..executors import LocalExecutor

    cell = finished_cell(out, model_name, method, settings)
    if cell is None:
        cell = save_cell(out, compute_cell(LocalExecutor().context, (model_name, method, settings)))
    return cell


def _progress_line(cell: dict) -> str:
    return (f"{cell['model']:10s} {cell['method']:14s} edge AUC {cell['edge_roc_auc']:.3f}  CPR {cell['cpr']:.3f}  "
            f"CMD {cell['cmd']:.3f}  {cell['seconds']:.2f}s")


def run_leaderboard(out_dir: str | os.PathLike, *, models: Sequence[str] | None = None,
                    methods: Sequence[str] | None = None, settings: BenchSettings = BenchSettings(),
                    progress=print, executor=None) -> list[dict]:
    """Every method x model cell, in-process or spread over ``executor`` (see :mod:`mechwork.executors`):
    the same cells either way. Finished cells in ``out_dir`` are reused; each new cell is saved as it
    completes, so an interrupted run (driver or worker) resumes from the cells already there."""
    from ..discovery import methods as registered
    from ..executors import ModelSpec, Unit, executor_from

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = list(models or circuit_models())
    methods = list(methods or [m.name for m in registered()])
    order = [(model_name, method) for model_name in models for method in methods]
    cells = {f"{m}__{k}": finished_cell(out, m, k, settings) for m, k in order}
    for cell in filter(None, cells.values()):
        if progress:
            progress(_progress_line(cell) + "  (finished earlier)")
    units = [Unit(key, compute_cell, (m, k, settings), model=ModelSpec(f"zoo:{m}")) for (m, k), (key, cell)
             in zip(order, cells.items(), strict=True) if cell is None]

    def done(key: str, result: dict) -> None:
        cells[key] = save_cell(out, result)
        if progress:
            progress(_progress_line(cells[key]))

    runner = executor_from(executor)
    try:
        runner.run(units, on_done=done)
    finally:
        if runner is not executor:
            runner.close()
    rows = [cells[f"{m}__{k}"] for m, k in order]
    write_tables(out, rows, settings)
    return rows


def write_tables(out: Path, rows: list[dict], settings: BenchSettings) -> None:
    atomic_write_csv(out / "leaderboard.csv", COLUMNS, [[r.get(c, "") for c in COLUMNS] for r in rows])
    markdown = markdown_table(rows, settings)
    atomic_write_text(out / "leaderboard.md", markdown)
    from ._page import write_page

    write_page(out, rows, markdown.splitlines()[0])


def markdown_table(rows: list[dict], settings: BenchSettings) -> str:
    head = ("| model | method | edge ROC AUC | node ROC AUC | precision at planted size | CPR (higher better) | "
            "CMD (lower better) | circuit edges | faithfulness | seconds |")
    lines = [f"Settings: {settings.n_prompts} prompts, seed {settings.seed}, metric {settings.metric}, "
             f"ablation {settings.ablation}.", "", head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['edge_roc_auc']:.3f} | {r['node_roc_auc']:.3f} | "
                     f"{r['precision_at_size']:.2f} | {r['cpr']:.3f} | {r['cmd']:.3f} | {r['n_edges']} | "
                     f"{r['faithfulness']:.3f} | {r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"
