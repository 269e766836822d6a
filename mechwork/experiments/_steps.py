"""What each kind of experiment step does. One function per kind, one signature:
``(session, step, folder) -> list of files written``; every file is written atomically."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from itertools import product
from pathlib import Path

from .._io import atomic_write_csv, atomic_write_json
from ..discovery import Circuit, CircuitRequest, find_circuit, make_metric, verify
from ..hooks import activation_patching, attribution_patching
from ..models import load, zoo
from ..reports import write_report
from ..viz import attention_patterns, faithfulness_curves, patching_heatmap, save_figure
from ._config import Experiment, ExperimentError, Step
from ._prompts import PromptTask, builtin_metric, builtin_task


class StepFailed(RuntimeError):
    """A step ran but its check failed (e.g. a circuit that does not reproduce)."""


class Session:
    """The model and task data of one experiment, loaded once and shared by its steps."""

    def __init__(self, experiment: Experiment, out: Path, progress: bool = True):
        self.experiment, self.out, self.progress = experiment, out, progress

    @cached_property
    def model(self):
        return load(self.experiment.model["spec"])

    @cached_property
    def zoo_entry(self):
        name = self.experiment.task.get("zoo")
        return zoo.get_entry(name) if name else None

    @cached_property
    def data(self):
        task = self.experiment.task
        if self.zoo_entry is not None:
            return self.zoo_entry.task.data(task.get("n_prompts", 32), seed=self.experiment.seed)
        if "builtin" in task:
            return builtin_task(self.model, task, self.experiment.seed, str(self.experiment.path))
        return PromptTask(self.model, task, str(self.experiment.path))

    @property
    def task_seed(self) -> int | None:
        """The seed the task's prompts were drawn with (a zoo or builtin task), None for given prompts."""
        task = self.experiment.task
        if "builtin" in task:
            return task.get("seed", self.experiment.seed)
        return self.experiment.seed if self.zoo_entry is not None else None

    @property
    def task_name(self) -> str:
        task = self.experiment.task
        return task.get("zoo") or task.get("builtin") or self.experiment.name

    @property
    def metric_key(self) -> str:
        default = self.zoo_entry.task.metric if self.zoo_entry is not None else "logit_diff"
        default = builtin_metric(self.experiment.task) or default
        return self.experiment.task.get("metric", default)

    @property
    def batch_size(self) -> int | None:
        """``[task] batch_size``: prompts every step runs at once (None: all)."""
        return self.experiment.task.get("batch_size")

    def metric(self):
        return make_metric(self.metric_key, self.model, self.data, batch_size=self.batch_size)

    def truth(self):
        entry = self.zoo_entry
        if entry is None or self.experiment.model["spec"] != f"zoo:{entry.name}":
            return None
        truth = entry.ground_truth()
        return truth if getattr(truth, "kind", "") == "circuit" else None

    def figure(self, fig, folder: Path, stem: str) -> list[Path]:
        """The figure as HTML, plus any static formats the experiment's [outputs] asks for."""
        files = [save_figure(fig, folder / f"{stem}.html")]
        files += [save_figure(fig, folder / f"{stem}.{fmt}") for fmt in self.experiment.outputs.get("static", [])]
        return files


def run_patch(s: Session, step: Step, folder: Path) -> list[Path]:
    c = step.config
    sweep = attribution_patching if c.get("method", "exact") == "attribution" else activation_patching
    result = sweep(s.model, s.data.clean, s.data.corrupted, s.metric(), c.get("site", "z"),
                   per_position=c.get("per_position", False), direction=c.get("direction", "denoise"),
                   batch_size=s.batch_size)
    result = result.normalized() if abs(result.clean_value - result.corrupted_value) > 1e-12 else result
    # itertools.product walks coordinates in the same (row-major) order as flatten()
    rows = [[*idx, v] for idx, v in zip(product(*map(range, result.shape)), result.values.flatten().tolist(),
                                        strict=True)]
    files = [atomic_write_json(folder / "result.json", result.to_dict()),
             atomic_write_csv(folder / "result.csv", [*result.dims, "value"], rows)]
    files += s.figure(patching_heatmap(result), folder, "heatmap")
    if "pos" in result.dims and "layer" in result.dims:
        files += s.figure(patching_heatmap(result, rows="layer", cols="pos"), folder, "heatmap_layer_position")
    return files


def run_attention(s: Session, step: Step, folder: Path) -> list[Path]:
    heads = step.config["heads"]
    if not all(isinstance(h, list) and len(h) == 2 and all(isinstance(i, int) for i in h) for h in heads):
        raise ExperimentError(f"{s.experiment.path}: step {step.name!r}: key 'heads' must be a list of "
                              f"[layer, head] pairs, got {heads!r}")
    prompt = step.config.get("prompt", 0)
    if not 0 <= prompt < len(s.data.clean):
        raise ExperimentError(f"{s.experiment.path}: step {step.name!r}: key 'prompt' is {prompt}, but the task "
                              f"has {len(s.data.clean)} prompts")
    fig = attention_patterns(s.model, s.data.clean[prompt], [tuple(h) for h in heads])
    return s.figure(fig, folder, "attention")


def run_discover(s: Session, step: Step, folder: Path) -> list[Path]:
    c = step.config
    options = dict(c.get("options", {}))
    if c["method"] == "acdc":  # ACDC checkpoints after every destination: an interrupted step resumes
        options.setdefault("checkpoint", str(folder / "acdc-checkpoint.json"))
        options.setdefault("progress", s.progress)
    value = float(c["value"]) if "value" in c else None  # TOML `value = 10` is an int
    request = CircuitRequest(c.get("select", "auto"), value, float(c.get("target", 0.9)))
    circuit = find_circuit(s.model, s.data, c["method"], metric=s.metric_key, ablation=c.get("ablation", "corrupted"),
                           positions=c.get("positions", False), request=request, truth=s.truth(),
                           task_name=s.task_name,
                           seed=s.task_seed, batch_size=s.batch_size,
                           **options)
    files = [circuit.save(folder / "circuit.json")]
    files.append(atomic_write_csv(folder / "edges.csv", ["edge", "score", "in_circuit"],
                      [[e, v, e in set(circuit.selected)] for e, v in circuit.edges.items()]))
    files += s.figure(faithfulness_curves({c["method"]: circuit}), folder, "faithfulness")
    if c.get("report", True):
        files.append(write_report(circuit, folder / "report.html", tokenizer=getattr(s.model, "tokenizer", None)))
    checkpoint = folder / "acdc-checkpoint.json"
    if checkpoint.exists() and "checkpoint" not in c.get("options", {}):
        checkpoint.unlink()  # the finished circuit supersedes it
    return files


def run_verify(s: Session, step: Step, folder: Path) -> list[Path]:
    circuit = Circuit.load(s.out / step.config["circuit"] / "circuit.json")
    result = verify(circuit, s.model, tolerance=step.config.get("tolerance", 1e-4),
                    rederive=not step.config.get("faithfulness_only", False))
    lines = [{"what": c.what, "ok": c.ok, "recorded": c.recorded, "recomputed": c.recomputed,
              "tolerance": c.tolerance, "detail": c.detail} for c in result.checks]
    path = atomic_write_json(folder / "verify.json", {"ok": result.ok, "weights_match": result.weights_match,
                                                      "rederived": result.rederived, "checks": lines,
                                                      "message": result.message()}, allow_nan=True)
    if not result.ok:
        raise StepFailed(f"step {step.name!r}: {result.message()}")
    return [path]


def run_resample(s: Session, step: Step, folder: Path) -> list[Path]:
    """Check a discovered circuit as an explanation: resample-ablate every edge outside it."""
    from ..challenges import resample_circuit

    circuit = Circuit.load(s.out / step.config["circuit"] / "circuit.json")
    result = resample_circuit(s.model, s.data, circuit.selected, metric=s.metric_key,
                              n_resamples=step.config.get("n_resamples", 5), seed=s.experiment.seed)
    return [atomic_write_json(folder / "resample.json", {**result.__dict__, "surviving": result.surviving,
                                             "summary": result.summary()})]


RUNNERS: dict[str, Callable[[Session, Step, Path], list[Path]]] = {
    "patch": run_patch, "attention": run_attention, "discover": run_discover, "verify": run_verify,
    "resample": run_resample,
}
