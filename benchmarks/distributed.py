"""Ray speed-ups: the leaderboard and exact edge patching on 1, 2 and 4 local Ray workers.

    python benchmarks/distributed.py [--quick] [--check] [--workers 1 2 4]

Each ratio is the in-process run's wall time (this process, all cores' threads) divided by the Ray run's
(workers of one thread each; actors already started and holding the model, so start-up is reported on
its own line and not in the ratio). Results are compared too: the distributed run must give the local
scores. On a 2-core machine 4 workers share 2 cores, so their ratio shows the cost of oversubscription,
not a gain.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import Report, Target, bench_arguments, minutes

from mechwork.bench import BenchSettings, run_leaderboard
from mechwork.executors import RayExecutor

AGREE = Target("<=", 1e-6)
TWO_WORKERS = Target(">=", 1.2, "x")  # 2 workers on >= 2 cores beat the in-process run by at least this


def _board(executor, models, methods, settings) -> tuple[float, list[dict]]:
    out = Path(tempfile.mkdtemp(prefix="mechwork-bench-"))
    try:
        start = time.perf_counter()
        rows = run_leaderboard(out, models=models, methods=methods, settings=settings, progress=None,
                               executor=executor)
        return time.perf_counter() - start, rows
    finally:
        shutil.rmtree(out)


def _worst_difference(rows: list[dict], reference: list[dict]) -> float:
    keys = ("edge_roc_auc", "node_roc_auc", "precision_at_size", "cpr", "cmd", "faithfulness", "n_edges")
    return max(abs(float(r[k]) - float(q[k])) for r, q in zip(rows, reference, strict=True) for k in keys)


def leaderboard_part(report: Report, workers: list[int], quick: bool) -> None:
    models = ["lookup", "induction", "induction_llama"]
    methods = ["eap", "eap-ig", "exact", "acdc", "node-patching"] if quick else None
    settings = BenchSettings(n_prompts=32, seed=0)
    _board(None, models[:1], ["eap"], settings)  # build/load the zoo once, outside the timings
    local_seconds, reference = _board(None, models, methods, settings)
    report.result("leaderboard in-process (baseline)", local_seconds, minutes(local_seconds),
                  detail=f"{len(reference)} cells, torch {torch.get_num_threads()} threads")
    for n in workers:
        with RayExecutor(workers=n, init_options={"num_cpus": max(n, 2)}) as pool:
            start = time.perf_counter()
            pool.worker_pids()
            report.result(f"Ray start, {n} workers", time.perf_counter() - start,
                          minutes(time.perf_counter() - start), detail="not in the ratios below")
            cold, rows = _board(pool, models, methods, settings)
            warm, again = _board(pool, models, methods, settings)
        report.result(f"leaderboard, {n} Ray workers: max |difference| from in-process", _worst_difference(rows,
                      reference), f"{_worst_difference(rows, reference):.1e}", AGREE)
        report.result(f"leaderboard speed-up, {n} Ray workers, models loading on first use", local_seconds / cold,
                      f"{local_seconds / cold:.2f}x", detail=f"{minutes(cold)}")
        report.result(f"leaderboard speed-up, {n} Ray workers, models already loaded", local_seconds / warm,
                      f"{local_seconds / warm:.2f}x", TWO_WORKERS if n == 2 else None, detail=f"{minutes(warm)}")


def main() -> int:
    parser = bench_arguments("Ray speed-ups")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    report = Report("benchmarks/distributed.py" + (" --quick" if args.quick else ""))
    report.header("ratio = in-process wall time / Ray wall time; > 1 is faster on Ray")
    leaderboard_part(report, args.workers, args.quick)
    return report.finish(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
