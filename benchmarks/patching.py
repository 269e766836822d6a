"""Patching benchmarks on a GPT-2-small-shaped model: medians and ratios measured in one process.

    python benchmarks/patching.py [--quick] [--check] [--batch 8 --seq 16 --repeats 5]

Every timing, baselines included, runs with the bridge's per-head edge hooks off: they make a forward
slower, and a fair baseline is the fastest plain forward. Ratios are taken over back-to-back pairs.
"""

from __future__ import annotations

import contextlib
import io
import sys

import torch
from _common import (
    Report,
    Target,
    bench_arguments,
    describe,
    gpt2_small_random,
    paired_ratio,
    random_prompt_pair,
    timings,
)
from transformer_lens import patching

from mechwork.hooks import activation_patching, attribution_patching, cache_activations
from mechwork.hooks._runner import hook_flags, uses_fast_path

SWEEP_SPEEDUP = Target(">=", 1.8, "x")
AGREE = Target("<=", 1e-4)
ATTRIBUTION = Target("<=", 3.5, " forwards")
CACHING = Target("<=", 1.1, "x")


def main() -> int:
    parser = bench_arguments("patching benchmarks")
    parser.add_argument("--only-caching", action="store_true", help="skip the sweeps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.batch, args.seq = 3, 2, 8
    model = gpt2_small_random()
    clean, corrupted, metric = random_prompt_pair(model, args.batch, args.seq)
    report = Report("benchmarks/patching.py" + (" --quick" if args.quick else ""))
    report.header(f"GPT2Config() random weights via the bridge ({describe(model)}), batch {args.batch} x {args.seq}",
                  "timings: median (range, n runs); ratios over back-to-back pairs in this process")
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        run(report, model, clean, corrupted, metric, args)
    return report.finish(args.check)


def run(report: Report, model, clean, corrupted, metric, args) -> None:
    report.note(f"blocks driven directly (layer-resuming fast path): {uses_fast_path(model)}")

    def forward():
        with torch.no_grad():
            model(clean)

    def hf_forward():
        with torch.no_grad():
            model.original_model(clean)

    base = timings(forward, repeats=max(5, args.repeats))
    report.result("plain bridge forward (baseline)", base.median, base.fmt(1e3, 1, " ms"))
    _, _, hf = paired_ratio(hf_forward, forward, max(5, args.repeats))
    report.result("Hugging Face model alone / bridge forward", hf.median, hf.fmt())

    if not args.only_caching:
        sweeps(report, model, clean, corrupted, metric, forward, args)

    selected = [f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers)
                for h in ("hook_resid_pre", "attn.hook_z", "hook_mlp_out")]
    _, _, sel = paired_ratio(lambda: cache_activations(model, clean, selected), forward, 10)
    report.result("caching resid_pre + hook_z + mlp_out of every layer / plain forward", sel.median, sel.fmt(unit="x"),
                  CACHING)
    _, _, every = paired_ratio(lambda: cache_activations(model, clean, lambda n: True), forward, 10)
    report.result(f"caching every hook ({len(model.hook_dict)}) / plain forward", every.median, every.fmt(unit="x"))


def sweeps(report: Report, model, clean, corrupted, metric, forward, args) -> None:
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    values = {}

    def tl_sweep():
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            values["tl"] = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)

    def our_sweep():
        values["ours"] = activation_patching(model, clean, corrupted, metric, "z")

    repeats = 1 if args.quick else 3
    tl_seconds, our_seconds, ratio = paired_ratio(tl_sweep, our_sweep, repeats, warmup=0)
    diff = float((values["ours"].values.to(clean.device) - torch.as_tensor(values["tl"]).float()).abs().max())
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    report.result(f"head-output sweep, all {n_heads} heads: TransformerLens patching / mechwork", ratio.median,
                  ratio.fmt(unit="x"), SWEEP_SPEEDUP,
                  detail=f"mechwork {our_seconds.fmt(1, 2, ' s')}, TL {tl_seconds.fmt(1, 2, ' s')}")
    report.result("head-output sweep: max |mechwork - TransformerLens|", diff, f"{diff:.2e}", AGREE)
    _, _, attr = paired_ratio(lambda: attribution_patching(model, clean, corrupted, metric, "z"), forward,
                              max(5, args.repeats))
    report.result("attribution patching, all heads (forwards)", attr.median, attr.fmt(), ATTRIBUTION)


if __name__ == "__main__":
    sys.exit(main())
