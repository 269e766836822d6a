"""The demo job: a patching sweep on ``zoo:induction`` written as an interactive heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .hooks import PatchingResult, activation_patching
from .models import load, zoo
from .viz import patching_heatmap


@dataclass(frozen=True)
class DemoResult:
    heads: PatchingResult
    heads_by_position: PatchingResult
    files: tuple[Path, ...]


def run_demo(out_dir: str | Path = "demo_out", *, n_prompts: int = 32, seed: int = 0) -> DemoResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load("zoo:induction")
    data = zoo.get_entry("induction").task.data(n_prompts, seed=seed)
    metric = data.logit_diff()
    heads = activation_patching(model, data.clean, data.corrupted, metric, "z").normalized()
    by_pos = activation_patching(model, data.clean, data.corrupted, metric, "z", per_position=True).normalized()
    files = []
    for name, result, title in (
        ("head_patching.html", heads, "zoo:induction — patching each head's output (clean into corrupted)"),
        ("head_position_patching.html", by_pos, None),
    ):
        path = out / name
        fig = patching_heatmap(result, title=title)
        fig.write_html(str(path), include_plotlyjs=True, full_html=True)
        files.append(path)
    return DemoResult(heads=heads, heads_by_position=by_pos, files=tuple(files))
