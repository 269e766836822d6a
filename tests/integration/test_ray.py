"""Distributed runs on a local Ray instance (2 CPUs) give the local run's results exactly.

Every comparison is against a run on the in-process executor (or plain local code): same cells, same
circuits, same files, whatever the number of workers, the order units finish in, or a worker killed
mid-run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from mechwork.bench import BenchSettings, run_leaderboard
from mechwork.executors import LocalExecutor, ModelSpec, RayExecutor, Unit, UnitFailed
from mechwork.experiments import run_experiment

pytest.importorskip("ray", reason="the Ray tests need mechwork[ray] (make test installs it)")

ROOT = Path(__file__).resolve().parents[2]
MODELS, METHODS = ["lookup", "induction"], ["eap", "exact"]
SETTINGS = BenchSettings(n_prompts=12, seed=1)
TIMING = {"seconds", "created"}  # wall-clock fields: when and how long, never what


@pytest.fixture(scope="module")
def ray_pool():
    # 4 logical CPUs on the 2-core machine: the pool's two actors and the CLI test's own one all fit
    with RayExecutor(workers=2, init_options={"num_cpus": 4}) as pool:
        yield pool


def _untimed(value):
    """``value`` without wall-clock fields (the only thing a distributed run may change)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _same(a, b, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: numbers by more than 1e-6 (workers run torch on other thread counts, so
    sums may round differently), anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _same(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same(x, y, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return [] if abs(a - b) <= 1e-6 else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _cells_and_circuits(out: Path) -> dict:
    files = sorted((out / "cells").glob("*.json")) + sorted((out / "circuits").glob("*.json"))
    return {f"{f.parent.name}/{f.name}": _untimed(json.loads(f.read_text())) for f in files}


class _Reversed(LocalExecutor):
    """In-process, but finishing units in reverse order: the combined result must not depend on it."""

    def run(self, units, *, on_done=None):
        return super().run(list(reversed(units)), on_done=on_done)


@pytest.fixture(scope="module")
def local_board(tmp_path_factory):
    out = tmp_path_factory.mktemp("local-board")
    rows = run_leaderboard(out, models=MODELS, methods=METHODS, settings=SETTINGS, progress=None)
    return out, rows


def test_leaderboard_on_ray_equals_the_local_run(ray_pool, local_board, tmp_path):
    local_out, local_rows = local_board
    lines = []
    rows = run_leaderboard(tmp_path, models=MODELS, methods=METHODS, settings=SETTINGS, progress=lines.append,
                           executor=ray_pool)
    assert _same(_untimed(rows), _untimed(local_rows)) == []
    assert _same(_cells_and_circuits(tmp_path), _cells_and_circuits(local_out)) == []
    assert len(lines) == len(MODELS) * len(METHODS)  # progress as each unit completes
    assert (tmp_path / "leaderboard.md").read_text().split("|")[:-1] != []


def test_finishing_order_does_not_change_the_leaderboard(local_board, tmp_path):
    local_out, local_rows = local_board
    # The first model's cells as finished earlier (saves their time); the other model's run in reverse order.
    for folder in ("cells", "circuits"):
        (tmp_path / folder).mkdir()
        for done in (local_out / folder).glob(f"{MODELS[0]}__*.json"):
            (tmp_path / folder / done.name).write_bytes(done.read_bytes())
    finished_in = []
    rows = run_leaderboard(tmp_path, models=MODELS, methods=METHODS, settings=SETTINGS, progress=finished_in.append,
                           executor=_Reversed())
    assert [line.split()[:2] for line in finished_in if "finished earlier" not in line] == [
        [MODELS[1], method] for method in reversed(METHODS)]
    assert [(r["model"], r["method"]) for r in rows] == [(r["model"], r["method"]) for r in local_rows]
    assert _same(_cells_and_circuits(tmp_path), _cells_and_circuits(local_out)) == []


def test_a_worker_killed_mid_run_is_retried_and_changes_nothing(ray_pool, local_board, tmp_path):
    local_out, local_rows = local_board
    victims = ray_pool.worker_pids()
    killed = []

    def kill_one_worker(line: str) -> None:  # after the first cell: the other worker is mid-unit
        if not killed:
            os.kill(victims[0], signal.SIGKILL)
            killed.append(victims[0])

    rows = run_leaderboard(tmp_path, models=MODELS, methods=METHODS, settings=SETTINGS,
                           progress=kill_one_worker, executor=ray_pool)
    assert killed and victims[0] not in ray_pool.worker_pids()  # the actor came back in a new process
    assert _same(_untimed(rows), _untimed(local_rows)) == []
    assert _same(_cells_and_circuits(tmp_path), _cells_and_circuits(local_out)) == []


def test_an_interrupted_driver_resumes_from_the_finished_cells(ray_pool, local_board, tmp_path):
    local_out, local_rows = local_board
    seen = []

    def stop_after_two(line: str) -> None:
        seen.append(line)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_leaderboard(tmp_path, models=MODELS, methods=METHODS, settings=SETTINGS, progress=stop_after_two,
                        executor=ray_pool)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 2
    lines = []
    rows = run_leaderboard(tmp_path, models=MODELS, methods=METHODS, settings=SETTINGS, progress=lines.append,
                           executor=ray_pool)
    assert sum("finished earlier" in line for line in lines) == 2
    assert _same(_untimed(rows), _untimed(local_rows)) == []
    assert _same(_cells_and_circuits(tmp_path), _cells_and_circuits(local_out)) == []


EXPERIMENT = """
name = "spread"
seed = 0
[model]
spec = "zoo:induction"
[task]
zoo = "induction"
n_prompts = 8
[[step]]
kind = "discover"
name = "eap"
method = "eap"
select = "top-n"
value = 6
report = false
[[step]]
kind = "discover"
name = "acdc"
method = "acdc"
options = { threshold = 0.01 }
report = false
[[step]]
kind = "patch"
name = "heads"
site = "z"
[[step]]
kind = "verify"
name = "verify-acdc"
circuit = "acdc"
"""


def _number_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _run_files(out: Path) -> dict:
    """Every file of a run, JSON without timings; run.json's per-step records without seconds."""
    found = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
        key = str(f.relative_to(out))
        if f.suffix == ".json":
            data = _untimed(json.loads(f.read_text()))
            if f.name == "run.json":
                data.pop("versions", None)
                data["experiment"].pop("file", None)
            if "checkpoint" in data.get("options", {}):  # ACDC's checkpoint: in the worker's scratch folder
                data["options"]["checkpoint"] = Path(data["options"]["checkpoint"]).name
            found[key] = data
        elif f.suffix == ".csv":
            found[key] = [[_number_or_text(v) for v in row] for row in csv.reader(f.read_text().splitlines())]
        elif f.suffix == ".toml":
            found[key] = f.read_text()
        else:
            found[key] = f.stat().st_size > 0
    return found


def test_experiment_on_ray_writes_the_local_run_files(ray_pool, tmp_path):
    experiment = tmp_path / "spread.toml"
    experiment.write_text(EXPERIMENT)
    local = run_experiment(experiment, tmp_path / "local", progress=False)
    spread = run_experiment(experiment, tmp_path / "ray", progress=False, executor=ray_pool)
    assert spread.ran == local.ran == ("eap", "acdc", "heads", "verify-acdc")
    assert spread.files == local.files
    assert _same(_run_files(tmp_path / "ray"), _run_files(tmp_path / "local")) == []
    again = run_experiment(experiment, tmp_path / "ray", progress=False, executor=ray_pool)
    assert again.ran == () and set(again.skipped) == set(local.ran)  # resumes: nothing left to do


def _slow_square(context, x):
    time.sleep(0.5)
    return x * x, os.getpid()


def test_units_in_flight_on_a_killed_worker_are_rerun(ray_pool):
    before = ray_pool.worker_pids()
    timer = threading.Timer(0.8, os.kill, (before[0], signal.SIGKILL))
    timer.start()
    results = ray_pool.run([Unit(f"u{i}", _slow_square, i) for i in range(8)])
    timer.join()
    assert {k: v[0] for k, v in results.items()} == {f"u{i}": i * i for i in range(8)}
    pids = {v[1] for v in results.values()}
    assert before[0] not in ray_pool.worker_pids() and pids - set(before)  # a restarted worker ran some


def test_a_failing_unit_names_itself(ray_pool):
    with pytest.raises(UnitFailed, match=r"'broken'.*ZeroDivisionError"):
        ray_pool.run([Unit("fine", _square, 3), Unit("broken", _square, None)])


def test_a_worker_with_other_weights_refuses(ray_pool, induction):
    spec = ModelSpec.of(induction)
    assert ray_pool.run([Unit("ok", _logit_sum, spec, model=spec)])["ok"] == pytest.approx(
        _logit_sum(LocalExecutor().context, spec), rel=1e-6)
    forged = ModelSpec(spec.spec, spec.dtype, "0" * 64)
    with pytest.raises(UnitFailed, match="different weights"):
        ray_pool.run([Unit("forged", _logit_sum, forged, model=forged)])


def test_workers_load_the_model_onto_the_drivers_kind_of_device(ray_pool, induction):
    """The spec carries the driver's device kind; a worker loads onto its own device of that kind, and one
    without a GPU refuses a CUDA model, saying how to give workers GPUs, rather than computing on the CPU."""
    spec = ModelSpec.of(induction)
    assert spec.device == "cpu"
    assert ray_pool.run([Unit("where", _device_of, spec, model=spec)])["where"] == "cpu"
    on_gpu = dataclasses.replace(spec, device="cuda")
    if torch.cuda.is_available():
        assert LocalExecutor().run([Unit("where", _device_of, on_gpu, model=on_gpu)])["where"] == "cuda"
    else:
        with pytest.raises(UnitFailed, match=r"sees none: give the workers GPUs \(RayExecutor\(gpus_per_worker"):
            ray_pool.run([Unit("where", _device_of, on_gpu, model=on_gpu)])


def _device_of(context, spec):
    return next(context.model(spec).parameters()).device.type


def _square(context, x):
    return x * x if x is not None else 1 / 0


def _logit_sum(context, spec):
    with torch.no_grad():
        return float(context.model(spec)(torch.arange(6)[None]).sum())


def test_nothing_imports_ray_without_the_flag():
    code = ("import sys, mechwork, mechwork.bench, mechwork.experiments, mechwork.executors, mechwork.discovery, "
            "mechwork.cli; from mechwork.cli import main; main(['zoo', 'list']); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cli_bench_with_ray_flag(tmp_path, capsys):
    from mechwork.cli import main

    assert main(["bench", "--out", str(tmp_path), "--models", "lookup", "--methods", "eap", "--n-prompts", "8",
                 "--ray", "--workers", "1"]) == 0
    assert (tmp_path / "cells" / "lookup__eap.json").exists()
    assert main(["bench", "--out", str(tmp_path), "--workers", "2"]) == 2  # --workers without --ray


@pytest.mark.parametrize("batch_size", [None, 5])
def test_exact_patching_spread_over_workers_equals_the_local_run(ray_pool, induction, batch_size):
    from mechwork.discovery import discover, task_from_data
    from mechwork.graph import Graph

    graph = Graph.from_model(induction)
    data = mechwork_zoo_data("induction", 12)
    task = dataclasses.replace(task_from_data(induction, data), batch_size=batch_size)
    local = discover(induction, graph, task, "exact")
    spread = discover(induction, graph, task, "exact", executor=ray_pool)
    _assert_same_scores(spread, local)
    assert spread.node_scores.keys() == local.node_scores.keys()
    assert all(abs(spread.node_scores[k] - v) <= 1e-6 for k, v in local.node_scores.items())
    assert local.scores.abs().max() > 0.1  # not a trivial all-zero agreement


class _KeyedByArrival(LocalExecutor):
    """Broken on purpose: results handed back in arrival order under the keys in submission order (a
    scheduler that loses track of which unit a result belongs to). The equality checks must catch it."""

    def run(self, units, *, on_done=None):
        arrived = list(super().run(list(reversed(units)), on_done=on_done).values())
        return dict(zip((unit.key for unit in units), arrived, strict=True))


def _averaged(parts):
    """Broken on purpose: the per-batch scores averaged, each micro-batch counted alike, not by its prompts."""
    parts = [value for _, value in parts]
    return {name: sum(p[name] for p in parts) / len(parts) for name in parts[0]}


@pytest.fixture(scope="module")
def three_micro_batches(induction):
    from mechwork.discovery import task_from_data
    from mechwork.graph import Graph

    task = task_from_data(induction, mechwork_zoo_data("induction", 12))
    return Graph.from_model(induction), dataclasses.replace(task, batch_size=5)  # 5 + 5 + 2 prompts


def _assert_same_scores(spread, local) -> None:
    assert torch.allclose(spread.scores, local.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_attribution_micro_batches_spread_over_workers_equal_the_local_run(ray_pool, induction, three_micro_batches,
                                                                        method):
    from mechwork.discovery import discover

    graph, task = three_micro_batches
    local = discover(induction, graph, task, method)
    assert local.scores.abs().max() > 0.1  # not a trivial all-zero agreement
    _assert_same_scores(discover(induction, graph, task, method, executor=ray_pool), local)
    _assert_same_scores(discover(induction, graph, task, method, executor=_Reversed()), local)


def test_a_broken_combination_of_micro_batches_is_caught(induction, three_micro_batches, monkeypatch):
    """The check above fails for micro-batch results matched to the wrong batch, or averaged, not weighted
    (EAP and EAP-IG add up their micro-batches through the same code, so EAP stands for both)."""
    from mechwork.discovery import _spread, discover

    graph, task = three_micro_batches
    local = discover(induction, graph, task, "eap")
    with pytest.raises(AssertionError):
        _assert_same_scores(discover(induction, graph, task, "eap", executor=_KeyedByArrival()), local)
    monkeypatch.setattr(_spread, "weighted_sum", _averaged)
    with pytest.raises(AssertionError):
        _assert_same_scores(discover(induction, graph, task, "eap", executor=_Reversed()), local)


def mechwork_zoo_data(name: str, n: int):
    from mechwork.models import zoo

    return zoo.get_entry(name).task.data(n, seed=2)
