"""Discovery benchmarks on a GPT-2-small-shaped model (32,491 edges); prints medians and ratios from one process.

    python benchmarks/discovery.py [--batch 8] [--seq 16] [--repeats 3]

Exact patching of all 32,491 edges takes tens of minutes on 2 CPU cores, so its rate is measured on
one full chunk of every destination group (every layer's q/k/v group, every MLP, the logits) and the
total is the sum over groups of (edges in group / that group's measured rate). The naive baseline
(one full forward with plain TransformerLens hooks per edge) is timed on edges spread over the layers.
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import bench_arguments, device_line, gpt2_small_random, median_seconds, random_prompt_pair

import mechwork
from mechwork.discovery import DiscoveryTask, discover, task_from_data
from mechwork.discovery._exact_fast import fast_exact_for
from mechwork.discovery._scoring import CircuitEvaluator
from mechwork.discovery.exact import _clean_run, _group_edges, _run_chunk
from mechwork.graph import Graph
from mechwork.hooks._runner import hook_flags


def naive_edge_seconds(model, graph, clean, corrupted, edges) -> float:
    """One forward per edge with TL hooks: the edge's destination input gets corrupted-minus-clean of its source."""
    import sys

    sys.path.insert(0, ".")
    from tests.edge_reference import run_with_edges_ablated

    times = []
    for name in edges:
        start = time.perf_counter()
        run_with_edges_ablated(model, clean, corrupted, {name})
        times.append(time.perf_counter() - start)
    # run_with_edges_ablated also runs the corrupted prompts once per call (a naive loop would cache
    # that): count only the patched forward, i.e. half of each call.
    return statistics.median(times) / 2


def exact_rate(model, graph, task, max_rows: int, pieces: bool = True) -> tuple[float, float]:
    """(estimated seconds for every edge, edges per second) from one chunk of every destination group.

    ``pieces``: exact's default (only what the ablation changes in the destination layer); off: the
    destination block rerun whole through the bridge (the previous implementation, for comparison)."""
    ablated = task.ablated(model, graph)
    clean = _clean_run(model, graph, task)
    fast = fast_exact_for(model, clean.resid_pre, task.position) if pieces else None
    if pieces and fast is None:
        raise RuntimeError("the layer-piece path did not reproduce this model's blocks")
    deltas = clean.outputs - ablated
    per_chunk = max(1, max_rows // task.clean.shape[0])
    total = 0.0
    groups = [(layer, kind) for layer in range(graph.n_layers) for kind in ("attn", "mlp")] + [(None, "logits")]
    with torch.no_grad():
        for layer, kind in groups:
            layout = _group_edges(graph, layer, kind)
            chunk = layout[:per_chunk]
            start = time.perf_counter()
            _run_chunk(model, graph, task, clean, deltas, layer, kind, chunk, fast)
            per_edge = (time.perf_counter() - start) / len(chunk)
            total += per_edge * len(layout)
    return total, graph.n_edges / total


def acdc_trial_estimate(model, graph, task, repeats: int) -> tuple[float, float]:
    """Estimated seconds for ACDC to test every edge once on this model: (whole-model trials, trials
    started at the destination's layer), from the median trial time per destination layer."""
    from mechwork.discovery import acdc as acdc_module

    whole = acdc_module._Loss(model, graph, task, "kl", from_layer=False)
    layered = acdc_module._Loss(model, graph, task, "kl", from_layer=True)
    mask = graph.full_mask(1.0)
    dst_node = graph.endpoint_tensor[:, 1]
    t_whole = median_seconds(lambda: whole(mask), repeats=repeats)
    total = 0.0
    for layer in range(graph.n_layers + 1):
        lo = graph.n_sources_attn(layer) if layer < graph.n_layers else graph.n_sources
        hi = graph.n_sources_attn(layer + 1) if layer + 1 < graph.n_layers else graph.n_sources + 1
        count = int(((dst_node >= lo) & (dst_node < hi)).sum())
        total += count * median_seconds(lambda layer=layer: layered(mask, layer), repeats=repeats)
    return t_whole * graph.n_edges, total


def main() -> None:
    parser = bench_arguments("discovery benchmarks")
    parser.add_argument("--max-rows", type=int, default=512)
    args = parser.parse_args()
    model = gpt2_small_random()
    clean, corrupted, metric = random_prompt_pair(model, args.batch, args.seq)
    graph = Graph.from_model(model)
    task = DiscoveryTask(clean, corrupted, metric)
    print(device_line(), f"| batch {args.batch} x {args.seq} tokens | GPT2Config() random weights via the bridge "
          f"| {graph.n_edges} edges")

    with torch.no_grad(), hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        forward = median_seconds(lambda: model(clean), repeats=max(5, args.repeats))
    print(f"plain bridge forward (edge hooks off): {forward * 1e3:.1f} ms")

    t_eap = median_seconds(lambda: discover(model, graph, task, "eap"), repeats=args.repeats)
    print(f"EAP over all {graph.n_edges} edges: {t_eap * 1e3:.0f} ms = {t_eap / forward:.2f} forwards (target <= 4)")

    evaluator = CircuitEvaluator(model, graph, task)
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(graph.n_edges, generator=g) < 0.05).float()
    t_circuit = median_seconds(lambda: evaluator.value(mask), repeats=max(5, args.repeats))
    print(f"circuit evaluation (5% of edges kept, the rest ablated): {t_circuit * 1e3:.0f} ms = "
          f"{t_circuit / forward:.2f} forwards (target <= 1.5)")

    whole_total, whole_rate = exact_rate(model, graph, task, args.max_rows, pieces=False)
    total, rate = exact_rate(model, graph, task, args.max_rows)
    sample = [graph.edges[i] for i in range(0, graph.n_edges, graph.n_edges // 6)][:6]
    naive = naive_edge_seconds(model, graph, clean, corrupted, sample)
    naive_total = naive * graph.n_edges
    print(f"exact edge patching: {rate:.1f} edges/s (all edges ~{total / 60:.1f} min) | naive one forward per edge: "
          f"{1 / naive:.1f} edges/s (~{naive_total / 60:.1f} min) | speed-up {naive_total / total:.2f}x (target >= 5x)"
          f" | destination block rerun whole instead: {whole_rate:.1f} edges/s, {naive_total / whole_total:.2f}x")

    acdc_whole, acdc_layered = acdc_trial_estimate(model, graph, task, args.repeats)
    print(f"ACDC on this model, every edge tested once: ~{acdc_whole / 3600:.1f} h with whole-model trials, "
          f"~{acdc_layered / 3600:.1f} h starting each trial at the destination's layer "
          f"({acdc_whole / acdc_layered:.2f}x)")

    induction = mechwork.load("zoo:induction")
    data = mechwork.zoo.get_entry("induction").task.data(32, seed=0)
    itask = task_from_data(induction, data, metric="kl")
    igraph = Graph.from_model(induction)
    t_acdc = median_seconds(lambda: discover(induction, igraph, itask, "acdc"), repeats=args.repeats)
    print(f"ACDC on zoo:induction (32 prompts, KL, threshold 0.01): {t_acdc:.2f} s (target < 60 s)")


if __name__ == "__main__":
    main()
