"""Ray speed-ups: the leaderboard and exact edge patching on 1, 2 and 4 local Ray workers.

    python benchmarks/distributed.py [--quick] [--check] [--workers 1 2 4] [--parts leaderboard exact]

Each ratio is an in-process run's wall time divided by the Ray run's (workers of one torch thread each;
actors already started, so start-up is reported on its own line and not in the ratios). Two in-process
baselines, both in this process: torch's default thread count (the plain local run) and one thread (what
each worker has), because on a loaded machine a multi-threaded run can lose far more to contention than a
one-thread one, and the first ratio then measures that rather than the spreading. Exact patching's ratios
are medians over repeats of back-to-back runs (in-process, in-process on one thread, Ray), so a change in
the machine's load moves all three; the leaderboard's baselines are one run each. Results are compared
too: the distributed run must give the local scores. On a 2-core machine 4 workers share 2 cores, so
their ratio shows the cost of oversubscription, not a gain.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from _common import BENCH_DIR, Report, Spread, Target, bench_arguments, clock, minutes, random_gpt2, random_prompt_pair

import mechwork
from mechwork.bench import BenchSettings, run_leaderboard
from mechwork.discovery import DiscoveryTask, discover
from mechwork.executors import RayExecutor
from mechwork.graph import Graph

AGREE = Target("<=", 1e-6)
TWO_WORKERS = Target(">=", 1.2, "x")  # 2 workers on >= 2 cores beat the in-process run by at least this
DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def one_torch_thread() -> Iterator[None]:
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


def _speed_ups(report: Report, what: str, n: int, local: Spread, single: Spread, ray: Spread, detail: str) -> None:
    """The two ratio lines: against the in-process run on torch's default threads, and on one thread."""
    for baseline, threads in ((local, DEFAULT_THREADS), (single, 1)):
        ratio = Spread(tuple(b / r for b, r in zip(baseline.values, ray.values, strict=True)))
        report.result(f"{what} speed-up, {n} Ray workers vs in-process on {threads} torch thread(s)", ratio.median,
                      ratio.fmt(unit="x"), TWO_WORKERS if n == 2 else None,
                      detail=f"in-process {baseline.fmt(unit=' s')}, Ray {ray.fmt(unit=' s')}{detail}")


class LeaderboardCase:
    """3 zoo models x 5 methods (--quick) or every method; each in-process baseline is run once."""

    def __init__(self, report: Report, quick: bool) -> None:
        self.report, self.models = report, ["lookup", "induction", "induction_llama"]
        self.methods = ["eap", "eap-ig", "exact", "acdc", "node-patching"] if quick else None
        self.settings = BenchSettings(n_prompts=32, seed=0)
        self._board(None, self.models, ["eap"])  # build every zoo model (a first build takes minutes) untimed
        self.local, self.reference = self._board(None, self.models, self.methods)
        with one_torch_thread():
            self.single, _ = self._board(None, self.models, self.methods)
        report.result("leaderboard in-process (baseline)", self.local, minutes(self.local),
                      detail=f"{len(self.reference)} cells, torch {DEFAULT_THREADS} threads; on 1 thread "
                             f"{minutes(self.single)}")

    def _board(self, executor, models, methods) -> tuple[float, list[dict]]:
        out = Path(tempfile.mkdtemp(prefix="mechwork-bench-"))
        try:
            start = time.perf_counter()
            rows = run_leaderboard(out, models=models, methods=methods, settings=self.settings, progress=None,
                                   executor=executor)
            return time.perf_counter() - start, rows
        finally:
            shutil.rmtree(out)

    def _worst_difference(self, rows: list[dict]) -> float:
        keys = ("edge_roc_auc", "node_roc_auc", "precision_at_size", "cpr", "cmd", "faithfulness", "n_edges")
        return max(abs(float(r[k]) - float(q[k])) for r, q in zip(rows, self.reference, strict=True) for k in keys)

    def on(self, pool: RayExecutor) -> None:
        n, report = pool.workers, self.report
        cold, rows = self._board(pool, self.models, self.methods)
        warm, again = self._board(pool, self.models, self.methods)
        worst = max(self._worst_difference(rows), self._worst_difference(again))
        report.result(f"leaderboard, {n} Ray workers: max |difference| from in-process", worst, f"{worst:.1e}", AGREE)
        report.result(f"leaderboard, {n} Ray workers, models loading on first use", cold, minutes(cold),
                      detail=f"{self.local / cold:.2f}x the in-process run")
        _speed_ups(report, "leaderboard (models loaded)", n, Spread((self.local,)), Spread((self.single,)),
                   Spread((warm,)), "")


class ExactCase:
    """Exact patching of every edge and node of a random 4-layer GPT-2 (8 heads, d_model 256) on random
    prompts, one micro-batch: on Ray, its destination groups cut into twice as many units as workers."""

    def __init__(self, report: Report, batch: int, seq: int, repeats: int) -> None:
        self.report, self.repeats = report, repeats
        name = "gpt2-4x256-random"
        random_gpt2(name, n_layer=4, n_embd=256, n_head=8, vocab_size=5000)  # saved once under bench_out/
        self.model = mechwork.load((BENCH_DIR / name).resolve())  # by absolute path: workers load it from there
        self.graph = Graph.from_model(self.model)
        self.task = DiscoveryTask(*random_prompt_pair(self.model, batch, seq))
        self.detail = (f"{name}, {self.graph.n_edges} edges + {len(self.graph.sources)} nodes, "
                       f"{batch} prompts x {seq} tokens")
        self.reference = self._run(None)
        report.result("exact patching in-process, first run", self.reference[0], minutes(self.reference[0]),
                      detail=f"{self.detail}, torch {DEFAULT_THREADS} threads")

    def _run(self, executor) -> tuple[float, torch.Tensor, dict[str, float]]:
        start = time.perf_counter()
        scores = discover(self.model, self.graph, self.task, "exact", executor=executor)
        return time.perf_counter() - start, scores.scores, scores.node_scores

    def _difference(self, run: tuple) -> float:
        _, edges, nodes = run
        _, reference_edges, reference_nodes = self.reference
        assert nodes.keys() == reference_nodes.keys()
        worst_node = max(abs(nodes[k] - v) for k, v in reference_nodes.items())
        return max(float((edges - reference_edges).abs().max()), worst_node)

    def on(self, pool: RayExecutor) -> None:
        n, report = pool.workers, self.report
        runs = [self._run(pool)]  # the workers load the model here: reported, not in the ratios
        local, single = [], []
        for _ in range(self.repeats):
            local.append(clock(lambda: self._run(None)))
            with one_torch_thread():
                single.append(clock(lambda: self._run(None)))
            runs.append(self._run(pool))
        worst = max(self._difference(run) for run in runs)
        report.result(f"exact patching, {n} Ray workers: max |difference| from in-process (edges and nodes)", worst,
                      f"{worst:.1e}", AGREE, detail=f"{len(runs)} runs")
        report.result(f"exact patching, {n} Ray workers, first run (models loading)", runs[0][0], minutes(runs[0][0]))
        _speed_ups(report, "exact patching (models loaded)", n, Spread(tuple(local)), Spread(tuple(single)),
                   Spread(tuple(run[0] for run in runs[1:])), f"; {self.detail}")


def main() -> int:
    parser = bench_arguments("Ray speed-ups")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--parts", nargs="+", choices=["leaderboard", "exact"], default=["leaderboard", "exact"])
    args = parser.parse_args()
    report = Report("benchmarks/distributed.py" + (" --quick" if args.quick else ""))
    report.header("ratio = in-process wall time / Ray wall time; > 1 is faster on Ray",
                  "every figure measured on this machine (none extrapolated)")
    cases = []
    if "leaderboard" in args.parts:
        cases.append(LeaderboardCase(report, args.quick))
    if "exact" in args.parts:
        # --quick: 4 prompts of 8 tokens, 3 repeats per worker count; else --batch x --seq, --repeats repeats
        cases.append(ExactCase(report, 4 if args.quick else args.batch, 8 if args.quick else args.seq,
                               3 if args.quick else args.repeats))
    for n in args.workers:
        with RayExecutor(workers=n, init_options={"num_cpus": max(n, 2)}) as pool:
            start = time.perf_counter()
            pool.worker_pids()
            report.result(f"Ray start, {n} workers", time.perf_counter() - start,
                          minutes(time.perf_counter() - start), detail="not in the ratios")
            for case in cases:
                case.on(pool)
    return report.finish(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
