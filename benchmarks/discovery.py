"""Discovery benchmarks: measured where a run fits a benchmark, extrapolated (and the extrapolation checked) where not.

    python benchmarks/discovery.py [--quick] [--check] [--batch 8 --seq 16 --repeats 5 --samples 3]

Part 1, a small random GPT-2 (4 layers x 8 heads, d_model 256, vocab 5,000, so the unembedding is about the
same share of a forward as in GPT-2 small; 1,519 edges): exact patching of every edge, the naive loop over
every edge and ACDC testing every edge are each run in full and timed, and the sampling procedure of
``_extrapolate.py`` is run on the same model; the ratio extrapolated / measured checks the procedure.

Part 2, GPT-2 small's shape (``GPT2Config()``, random weights, 32,491 edges): EAP, EAP-IG (5 steps) and
circuit evaluation measured as ratios to a plain forward (back-to-back pairs); exact patching, the naive
loop and ACDC from the same sampling procedure, labelled ``extrapolated`` (a full naive run is hours here).
Part 3, a Llama-shaped random model (8 layers, d_model 512, 8 query / 2 key-value heads, RMSNorm, gated
MLP, rotary; batch 8 x 32): EAP, EAP-IG and circuit evaluation as forwards, and exact vs naive (extrapolated).
Every line with a target ends in ``met`` or ``MISSED``; ``--check`` exits 1 when one is missed.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from _common import (
    Report,
    Spread,
    Target,
    bench_arguments,
    describe,
    gpt2_small_random,
    llama_random,
    minutes,
    paired_ratio,
    random_gpt2,
    random_prompt_pair,
    timings,
)
from _extrapolate import (
    acdc_every_edge,
    full_exact,
    full_naive,
    group_samples,
    sampled_exact,
    sampled_naive,
)

from mechwork.discovery import CircuitEvaluator, DiscoveryTask, discover
from mechwork.graph import Graph
from mechwork.hooks._runner import hook_flags

SPEEDUP = Target(">=", 10, "x")  # issue 17 (scale up) on GPT-2 small's shape; it was 5x before
SPEEDUP_LLAMA = Target(">=", 5, "x")  # issue 12 (architectures), the Llama shape
ACDC_GPT2 = Target("<", 30, " min")
EAP = Target("<=", 3.5, " forwards")  # issue 17 on GPT-2 small's shape
EAP_LLAMA = Target("<=", 4, " forwards")  # issue 12, the Llama shape
EAP_IG = Target("<=", 12, " forwards")  # issue 17: EAP-IG with 5 steps
CIRCUIT = Target("<=", 1.5, " forwards")
AGREE = Target("<=", 1e-4)
EXTRAPOLATION = Target("in", 0.8, hi=1.25)  # extrapolated / measured on the small model


def edge_hooks_off(model):
    """The bridge's per-head edge hooks (result, split q/k/v, MLP input) off: the fastest plain forward."""
    return hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False)


def forward_baseline(model, tokens, repeats: int) -> Spread:
    with torch.no_grad(), edge_hooks_off(model):
        return timings(lambda: model(tokens), repeats=repeats)


def spread_of(values) -> Spread:
    return Spread(tuple(values))


def warn_lines(report: Report, messages: list[str]) -> None:
    for message in messages:
        report.note(f"WARNING from mechwork: {message}")


# ---- part 1: the small model, where every run is measured in full ----------------------------------
def small_model_check(report: Report, args) -> dict[str, float]:
    """Returns extrapolated / measured per procedure (exact, naive, acdc, speed-up)."""
    if args.quick:
        model = random_gpt2("gpt2-2x128-random", n_layer=2, n_embd=128, n_head=4, vocab_size=1000)
    else:
        model = random_gpt2("gpt2-4x256-random", n_layer=4, n_embd=256, n_head=8, vocab_size=5000)
    graph = Graph.from_model(model)
    clean, corrupted, metric = random_prompt_pair(model, args.batch, args.seq)
    task = DiscoveryTask(clean, corrupted, metric)
    print(f"-- part 1: small random GPT-2 ({describe(model)}; {graph.n_edges} edges), batch {args.batch} x "
          f"{args.seq} tokens: full runs measured, and the sampling procedure checked against them")
    forward = forward_baseline(model, clean, args.repeats)
    report.result("plain forward, edge hooks off (baseline)", forward.median, forward.fmt(1e3, 1, " ms"))

    full_exact(model, graph, task)  # warm-up: the first run in a process pays one-time costs
    runs = [full_exact(model, graph, task) for _ in range(args.full_repeats)]
    warn_lines(report, runs[0][2])
    exact_full = spread_of(r[0] for r in runs)
    exact_est = [sampled_exact(model, graph, task) for _ in range(args.sample_repeats)]
    exact_x = spread_of(e.total for e in exact_est)
    naive_runs = [full_naive(model, graph, clean, corrupted, metric) for _ in range(args.full_repeats)]
    naive_full = spread_of(r[0] for r in naive_runs)
    naive_est = [sampled_naive(model, graph, clean, corrupted, metric, args.samples)
                 for _ in range(args.sample_repeats)]
    naive_x = spread_of(e.total for e in naive_est)

    diff = float((naive_runs[0][1] - runs[0][1]).abs().max())
    report.result("naive loop vs discover(exact), every edge: max |score difference|", diff, f"{diff:.2e}", AGREE,
                  detail=f"largest |score| {float(runs[0][1].abs().max()):.3g}")
    report.result("exact patching, every edge (nodes=False)", exact_full.median, exact_full.fmt(1, 2, " s"),
                  detail=f"{graph.n_edges / exact_full.median:.0f} edges/s, {exact_full.median / forward.median:.0f} "
                         "forwards")
    report.result("naive loop, every edge (one patched forward each)", naive_full.median, naive_full.fmt(1, 2, " s"),
                  detail=f"{graph.n_edges / naive_full.median:.0f} edges/s")
    speedup = naive_full.median / exact_full.median
    report.result("exact vs naive, small model", speedup, f"{speedup:.2f}x")

    ratios = {}
    ratios["exact"] = exact_x.median / exact_full.median
    report.result("exact, extrapolated from one chunk per group / measured", ratios["exact"],
                  f"{ratios['exact']:.2f}", EXTRAPOLATION, how="check",
                  detail=f"extrapolated {exact_x.fmt(1, 2, ' s')} from {exact_est[0].n_sampled} sampled edges")
    ratios["naive"] = naive_x.median / naive_full.median
    report.result(f"naive, extrapolated from {args.samples} edges per group / measured", ratios["naive"],
                  f"{ratios['naive']:.2f}", EXTRAPOLATION, how="check",
                  detail=f"extrapolated {naive_x.fmt(1, 2, ' s')}")
    speedup_x = naive_x.median / exact_x.median
    ratios["speedup"] = speedup_x / speedup
    report.result("exact vs naive speed-up, extrapolated / measured", ratios["speedup"], f"{ratios['speedup']:.2f}",
                  EXTRAPOLATION, how="check", detail=f"extrapolated speed-up {speedup_x:.2f}x")

    acdc_full = [acdc_every_edge(model, graph, task)[0] for _ in range(args.full_repeats)]
    acdc_est = [acdc_every_edge(model, graph, task, args.acdc_samples)[1] for _ in range(args.sample_repeats)]
    acdc_m, acdc_x = spread_of(acdc_full), spread_of(e.total for e in acdc_est)
    report.result("ACDC testing every edge (threshold -inf: nothing pruned)", acdc_m.median, acdc_m.fmt(1, 2, " s"),
                  detail=f"{graph.n_edges} trials, {acdc_m.median / graph.n_edges * 1e3:.1f} ms each")
    ratios["acdc"] = acdc_x.median / acdc_m.median
    report.result(f"ACDC, extrapolated from the calls holding {args.acdc_samples} trials per layer / measured",
                  ratios["acdc"],
                  f"{ratios['acdc']:.2f}", EXTRAPOLATION, how="check", detail=f"extrapolated {acdc_x.fmt(1, 2, ' s')}")

    start = time.perf_counter()
    default = discover(model, graph, task, "acdc")
    seconds = time.perf_counter() - start
    tested = int((default.scores != default.scores.min()).sum())
    report.result("ACDC at its defaults (KL, threshold 0.01), for context", seconds, f"{seconds:.2f} s",
                  detail=f"{len(default.circuit)} edges kept, about {tested} of {graph.n_edges} edges tested "
                         "(the rest dropped with their disconnected node)")
    return ratios


# ---- lines parts 2 and 3 share -----------------------------------------------------------------------
def forward_ratios(report: Report, model, graph: Graph, task, repeats: int, shape: str = "",
                   eap_target: Target = EAP) -> None:
    """The baseline forward, then EAP, EAP-IG (5 steps) and one circuit evaluation as forwards (back-to-back
    pairs)."""
    def forward():
        with torch.no_grad(), edge_hooks_off(model):
            model(task.clean)

    base = forward_baseline(model, task.clean, repeats)
    report.result("plain forward, edge hooks off (baseline)", base.median, base.fmt(1e3, 1, " ms"))
    eap, fwd, ratio = paired_ratio(lambda: discover(model, graph, task, "eap"), forward, repeats)
    report.result(f"EAP over all {graph.n_edges} edges{shape} (forwards, back-to-back pairs)", ratio.median,
                  ratio.fmt(), eap_target, detail=f"EAP {eap.fmt(1e3, 0, ' ms')}, forward {fwd.fmt(1e3, 0, ' ms')}")
    ig, fwd, ratio = paired_ratio(lambda: discover(model, graph, task, "eap-ig", steps=5), forward, repeats)
    report.result(f"EAP-IG, 5 steps, over all {graph.n_edges} edges{shape} (forwards, back-to-back pairs)",
                  ratio.median, ratio.fmt(), EAP_IG,
                  detail=f"EAP-IG {ig.fmt(1e3, 0, ' ms')}, forward {fwd.fmt(1e3, 0, ' ms')}")
    evaluator = CircuitEvaluator(model, graph, task)
    mask = (torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    one, fwd, ratio = paired_ratio(lambda: evaluator.value(mask), forward, repeats)
    report.result(f"circuit evaluation{shape}, 5% of edges kept, the rest ablated (forwards)", ratio.median,
                  ratio.fmt(), CIRCUIT,
                  detail=f"one circuit {one.fmt(1e3, 0, ' ms')}, forward {fwd.fmt(1e3, 0, ' ms')}")


def sampled_pairs(report: Report, model, graph: Graph, task, metric, args, repeats: int,
                  shape: str = "") -> tuple[list, list]:
    """(exact estimates, naive estimates), interleaved so the load moves both; the naive loop samples among
    the edges exact samples, and their scores on the common edges must agree."""
    exact_est, naive_est = [], []
    within = group_samples(graph, max(1, 512 // args.batch))
    for _ in range(repeats):
        naive_est.append(sampled_naive(model, graph, task.clean, task.corrupted, metric, args.samples, within))
        exact_est.append(sampled_exact(model, graph, task))
    warn_lines(report, exact_est[0].warnings)
    common = sorted(set(naive_est[0].sampled) & set(exact_est[0].sampled))
    diff = max(abs(naive_est[0].sampled[i] - exact_est[0].sampled[i]) for i in common)
    report.result(f"naive loop vs discover(exact){shape} on {len(common)} sampled edges: max |score difference|",
                  diff, f"{diff:.2e}", AGREE)
    return exact_est, naive_est


# ---- part 2: GPT-2 small's shape --------------------------------------------------------------------
def gpt2_small(report: Report, args, check: dict[str, float]) -> None:
    model = gpt2_small_random()
    graph = Graph.from_model(model)
    clean, corrupted, metric = random_prompt_pair(model, args.batch, args.seq)
    task = DiscoveryTask(clean, corrupted, metric)
    print(f"-- part 2: GPT2Config() random weights ({describe(model)}; {graph.n_edges} edges), batch {args.batch} x "
          f"{args.seq} tokens")

    forward_ratios(report, model, graph, task, args.repeats)
    exact_est, naive_est = sampled_pairs(report, model, graph, task, metric, args, args.sample_repeats)
    exact_x = spread_of(e.total for e in exact_est)
    naive_x = spread_of(e.total for e in naive_est)
    report.result("exact patching, every edge", exact_x.median, exact_x.fmt(1 / 60, 1, " min"), how="extrapolated",
                  detail=f"{graph.n_edges / exact_x.median:.1f} edges/s; from {exact_est[0].n_sampled} edges, one "
                         f"chunk per group, from its middle (small-model check: x{check['exact']:.2f} of measured)")
    report.result("naive loop, every edge", naive_x.median, naive_x.fmt(1 / 60, 0, " min"), how="extrapolated",
                  detail=f"{graph.n_edges / naive_x.median:.1f} edges/s; {args.samples} edges per group "
                         f"(small-model check: x{check['naive']:.2f})")
    speedups = spread_of(n.total / e.total for n, e in zip(naive_est, exact_est, strict=True))
    report.result("exact vs naive speed-up", speedups.median, speedups.fmt(unit="x"), SPEEDUP, how="extrapolated",
                  detail=f"small-model check of the extrapolated speed-up: x{check['speedup']:.2f}")

    acdc_est = [acdc_every_edge(model, graph, task, args.acdc_samples)[1] for _ in range(args.sample_repeats)]
    acdc_x = spread_of(e.total / 60 for e in acdc_est)
    trial = statistics.median(s for _, s in acdc_est[0].groups.values())  # seconds per trial, batched calls
    report.result("ACDC testing every edge on GPT-2 small's shape, 2 CPU cores" if torch.get_num_threads() == 2
                  else f"ACDC testing every edge on GPT-2 small's shape, {torch.get_num_threads()} threads",
                  acdc_x.median, acdc_x.fmt(1, 1, " min"), ACDC_GPT2, how="extrapolated",
                  detail=f"{graph.n_edges} trials, {trial * 1e3:.0f} ms per trial (median over layers, trials run in "
                         f"batched calls); calls holding {args.acdc_samples} trials per layer timed (small-model "
                         f"check: x{check['acdc']:.2f})")


# ---- part 3: a Llama-shaped model (grouped-query attention, RMSNorm, gated MLP, rotary) ----------------
def llama_shaped(report: Report, args) -> None:
    model = llama_random()
    graph = Graph.from_model(model)
    seq = args.llama_seq
    clean, corrupted, metric = random_prompt_pair(model, args.batch, seq)
    task = DiscoveryTask(clean, corrupted, metric)
    print(f"-- part 3: Llama-shaped random model ({describe(model)}, {graph.kv_heads} key/value heads; "
          f"{graph.n_edges} edges), batch {args.batch} x {seq} tokens")

    forward_ratios(report, model, graph, task, args.repeats, shape=", Llama shape", eap_target=EAP_LLAMA)
    exact_est, naive_est = sampled_pairs(report, model, graph, task, metric, args, 1, shape=", Llama shape")
    exact, naive = exact_est[0], naive_est[0]
    speedup = naive.total / exact.total
    report.result("exact vs naive speed-up, Llama shape", speedup, f"{speedup:.2f}x", SPEEDUP_LLAMA, how="extrapolated",
                  detail=f"exact {minutes(exact.total)}, naive {minutes(naive.total)} for every edge "
                         "(procedure checked on the small GPT-2 in part 1)")


def main() -> int:
    parser = bench_arguments("discovery benchmarks")
    parser.add_argument("--samples", type=int, default=3, help="naive-loop edges timed per destination group")
    parser.add_argument("--acdc-samples", type=int, default=5, help="ACDC trials timed per destination layer")
    parser.add_argument("--sample-repeats", type=int, default=3, help="repeats of each sampled extrapolation")
    parser.add_argument("--full-repeats", type=int, default=3, help="repeats of each full run on the small model")
    parser.add_argument("--skip-small", action="store_true", help="skip part 1 (no extrapolation check)")
    parser.add_argument("--skip-gpt2", action="store_true", help="skip part 2 (GPT-2 small's shape)")
    parser.add_argument("--skip-llama", action="store_true", help="skip part 3 (the Llama-shaped model)")
    parser.add_argument("--llama-seq", type=int, default=32, help="tokens per prompt in part 3")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.samples, args.acdc_samples, args.sample_repeats, args.full_repeats = 3, 1, 2, 1, 1
        args.batch, args.seq, args.llama_seq = 2, 8, 8
    report = Report("benchmarks/discovery.py" + (" --quick" if args.quick else ""))
    report.header("timings: median (range, n runs); ratios against a plain forward with edge hooks off, same process",
                  "[measured]: the whole run timed; [extrapolated]: from sampled parts (benchmarks/_extrapolate.py); "
                  "[check]: extrapolated / measured on the small model")
    nan = float("nan")
    check = {"exact": nan, "naive": nan, "speedup": nan, "acdc": nan}
    if not args.skip_small:
        check = small_model_check(report, args)
    if not args.skip_gpt2:
        gpt2_small(report, args, check)
    if not args.skip_llama:
        llama_shaped(report, args)
    return report.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
