"""Patching benchmarks on a GPT-2-small-shaped model; prints medians and ratios measured in one process.

    python benchmarks/patching.py [--batch 8] [--seq 16] [--repeats 3]
"""

from __future__ import annotations

import torch
from _common import bench_arguments, device_line, gpt2_small_random, median_seconds, random_prompt_pair
from transformer_lens import patching

from mechwork.hooks import activation_patching, attribution_patching, cache_activations
from mechwork.hooks._runner import hook_flags, uses_fast_path


def main() -> None:
    parser = bench_arguments("patching benchmarks")
    parser.add_argument("--only-caching", action="store_true", help="skip the sweeps")
    args = parser.parse_args()
    model = gpt2_small_random()
    clean, corrupted, metric = random_prompt_pair(model, args.batch, args.seq)
    print(device_line(), f"| batch {args.batch} x {args.seq} tokens | GPT2Config() random weights via the bridge")
    # Every timing, baselines included, runs with the bridge's per-head edge hooks off: they make a forward
    # slower, and a fair baseline is the fastest plain forward.
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        run(model, clean, corrupted, metric, args.repeats, args.only_caching)


def run(model, clean, corrupted, metric, repeats: int, only_caching: bool) -> None:
    device = clean.device
    print(f"fast layer-resuming path in use: {uses_fast_path(model)}")

    with torch.no_grad():
        forward = median_seconds(lambda: model(clean), repeats=max(5, repeats))
        hf_forward = median_seconds(lambda: model.original_model(clean), repeats=max(5, repeats))
    print(f"plain bridge forward: {forward * 1e3:.1f} ms (Hugging Face model alone: {hf_forward * 1e3:.1f} ms)")

    if not only_caching:
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
        tl_values = {}

        def tl_sweep():
            with torch.no_grad():
                tl_values["v"] = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)

        ours = {}

        def our_sweep():
            ours["r"] = activation_patching(model, clean, corrupted, metric, "z")

        t_tl = median_seconds(tl_sweep, repeats=repeats, warmup=0)
        t_ours = median_seconds(our_sweep, repeats=repeats, warmup=0)
        diff = float((ours["r"].values.to(device) - torch.as_tensor(tl_values["v"]).float()).abs().max())
        print(
            f"head-output sweep, all 144 heads: mechwork {t_ours:.2f} s ({t_ours / forward:.0f} forwards) | "
            f"TransformerLens {t_tl:.2f} s ({t_tl / forward:.0f} forwards) | speed-up {t_tl / t_ours:.2f}x "
            f"(target >= 1.8x) | max |diff| {diff:.2e}"
        )

        t_attr = median_seconds(lambda: attribution_patching(model, clean, corrupted, metric, "z"), repeats=5)
        ratio = t_attr / forward
        print(f"attribution patching, all heads: {t_attr * 1e3:.0f} ms = {ratio:.2f} forwards (target <= 3.5)")

    selected = [f"blocks.{layer}.{h}" for layer in range(model.cfg.n_layers)
                for h in ("hook_resid_pre", "attn.hook_z", "hook_mlp_out")]
    t_sel = median_seconds(lambda: cache_activations(model, clean, selected), repeats=10)
    t_all = median_seconds(lambda: cache_activations(model, clean, lambda n: True), repeats=10)
    with torch.no_grad():
        t_fwd = median_seconds(lambda: model(clean), repeats=10)
    print(
        f"caching resid_pre + z + mlp_out of every layer: {t_sel / t_fwd:.2f}x a plain forward (target <= 1.1x); "
        f"every hook ({len(model.hook_dict)}): {t_all / t_fwd:.2f}x"
    )


if __name__ == "__main__":
    main()
