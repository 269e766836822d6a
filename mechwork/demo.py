"""The demo job on ``zoo:induction``: a patching sweep drawn as interactive heatmaps, then
discovery -> circuit -> shared HTML report -> verify."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .discovery import Circuit, Verification, find_circuit, verify
from .hooks import PatchingResult, activation_patching
from .models import load, zoo
from .reports import write_report
from .viz import patching_heatmap, save_figure


@dataclass(frozen=True)
class DemoResult:
    heads: PatchingResult
    heads_by_position: PatchingResult
    circuit: Circuit
    verification: Verification
    files: tuple[Path, ...]


def run_demo(out_dir: str | Path = "demo_out", *, n_prompts: int = 32, seed: int = 0,
             method: str = "acdc") -> DemoResult:
    out = Path(out_dir)
    model = load("zoo:induction")
    entry = zoo.get_entry("induction")
    data = entry.task.data(n_prompts, seed=seed)
    metric = data.logit_diff()
    heads = activation_patching(model, data.clean, data.corrupted, metric, "z").normalized()
    by_pos = activation_patching(model, data.clean, data.corrupted, metric, "z", per_position=True).normalized()
    files = [
        save_figure(patching_heatmap(heads, title="zoo:induction — patching each head's output (clean into "
                                                  "corrupted)"), out / "head_patching.html"),
        save_figure(patching_heatmap(by_pos, rows="layer", cols="pos"), out / "head_position_patching.html"),
    ]
    circuit = find_circuit(model, data, method, truth=entry.ground_truth(), task_name=entry.name, seed=seed)
    files.append(circuit.save(out / f"induction-{method}.json"))
    files.append(write_report(circuit, out / f"induction-{method}.html", tokenizer=model.tokenizer))
    check = verify(Circuit.load(files[-2]))  # from the file, reloading the model by reference, as a reader would
    return DemoResult(heads=heads, heads_by_position=by_pos, circuit=circuit, verification=check, files=tuple(files))
