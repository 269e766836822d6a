"""Ablations, caching, streaming to disk (bounded memory, resumable, atomic) and hook selectors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mechwork.hooks import (
    HookSelector,
    InputError,
    UnknownHookError,
    cache_activations,
    compile_ablation,
    load_activations,
    run_with_ablation,
    stream_activations,
)
from tests.conftest import no_hooks_left


def test_cache_equals_transformerlens_run_with_cache(tiny, tiny_pair):
    clean, _ = tiny_pair
    logits, acts = cache_activations(tiny, clean, "blocks.*.attn.hook_z")
    with torch.no_grad():
        ref_logits, ref = tiny.run_with_cache(clean)
    assert list(acts) == [f"blocks.{i}.attn.hook_z" for i in range(3)]
    for name, value in acts.items():
        torch.testing.assert_close(value, ref[name])
    torch.testing.assert_close(logits, ref_logits)


def test_unknown_hook_names_suggest_near_matches(tiny, tiny_pair):
    with pytest.raises(UnknownHookError, match=r"blocks\.0\.attn\.hook_z"):
        cache_activations(tiny, tiny_pair[0], "blocks.0.attn.hook_zz")
    with pytest.raises(UnknownHookError, match="no hook named"):
        HookSelector.of(["blocks.*.nothing"]).resolve(tiny)
    assert HookSelector.of(lambda n: n.endswith("hook_pattern")).resolve(tiny)[0] == "blocks.0.attn.hook_pattern"
    assert no_hooks_left(tiny)


def test_hook_names_follow_the_bridge_flags(tiny):
    from mechwork.hooks import hook_names
    from mechwork.hooks._runner import hook_flags

    with hook_flags(tiny, attn_result=False, split_qkv=False, mlp_in=False):
        off = set(hook_names(tiny))
    with hook_flags(tiny, attn_result=True, split_qkv=True, mlp_in=True):
        on = set(hook_names(tiny))
    assert "blocks.0.attn.hook_result" in on - off
    assert "blocks.1.hook_q_input" in on - off
    assert off < on


def test_zero_ablation_of_a_head_equals_hand_computation(tiny, tiny_pair):
    clean, _ = tiny_pair
    logits = run_with_ablation(tiny, clean, compile_ablation(tiny, ["blocks.1.attn.head.2"], "zero"))

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with torch.no_grad():
        expected = tiny.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(logits, expected)


def test_mean_and_resample_ablation(tiny, tiny_pair):
    clean, corrupted = tiny_pair
    mean_plan = compile_ablation(tiny, ["blocks.0.mlp"], "mean", reference=corrupted)
    _, ref = cache_activations(tiny, corrupted, ["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(mean_plan.values[0][0], ref["blocks.0.hook_mlp_out"].mean(0))
    resample = compile_ablation(tiny, [("blocks.2.attn.hook_z", 1)], "resample", reference=corrupted, batch=5)
    # Resampling from a reference equal to the prompts themselves (one-to-one) changes nothing.
    identity = compile_ablation(tiny, [("blocks.2.attn.hook_z", 1)], "resample", reference=clean[:1], batch=1)
    with torch.no_grad():
        torch.testing.assert_close(run_with_ablation(tiny, clean[:1], identity), tiny(clean[:1]))
    with pytest.raises(InputError, match="reference"):
        compile_ablation(tiny, ["blocks.0.mlp"], "mean")
    with pytest.raises(InputError, match="batch"):
        run_with_ablation(tiny, clean[:2], resample)


def test_resample_ablation_from_a_larger_reference_set_by_value(tiny, tiny_pair):
    """Each ablated prompt gets head 1's output on one reference prompt (of 8, for 5 prompts): the row
    it was drawn from is recovered by matching against a plain TransformerLens cache, must be the
    documented draw (``torch.randint`` from a generator seeded with ``seed``), and the logits equal a
    hand-written hook that writes those rows in."""
    clean, _ = tiny_pair
    reference = torch.randint(0, 40, (8, 9), generator=torch.Generator().manual_seed(4))
    plan = compile_ablation(tiny, [("blocks.2.attn.hook_z", 1)], "resample", reference=reference, batch=5, seed=1)
    seen = {}

    def keep(z, hook):
        seen["z"] = z.detach().clone()

    with torch.no_grad():
        with tiny.hooks(fwd_hooks=plan.hooks(5) + [("blocks.2.attn.hook_z", keep)]):
            tiny(clean)
        _, ref_cache = tiny.run_with_cache(reference, names_filter="blocks.2.attn.hook_z")
        _, own_cache = tiny.run_with_cache(clean, names_filter="blocks.2.attn.hook_z")
    ref_z, own_z = ref_cache["blocks.2.attn.hook_z"], own_cache["blocks.2.attn.hook_z"]
    drawn = []
    for i in range(5):
        matches = [j for j in range(8) if torch.equal(seen["z"][i, :, 1], ref_z[j, :, 1])]
        assert len(matches) == 1, f"prompt {i}: head 1 matches reference rows {matches}"
        drawn.append(matches[0])
    torch.testing.assert_close(seen["z"][:, :, [0, 2, 3]], own_z[:, :, [0, 2, 3]])  # other heads untouched
    assert drawn == torch.randint(0, 8, (5,), generator=torch.Generator().manual_seed(1)).tolist()
    assert len(set(drawn)) > 1 and max(drawn) >= 5  # a real draw, reaching rows past the batch size

    def write_in(z, hook):
        z = z.clone()
        z[:, :, 1] = ref_z[drawn, :, 1]
        return z

    with torch.no_grad():
        expected = tiny.run_with_hooks(clean, fwd_hooks=[("blocks.2.attn.hook_z", write_in)])
    torch.testing.assert_close(run_with_ablation(tiny, clean, plan), expected)


def test_stream_round_trip_and_resume(tiny, tmp_path):
    tokens = torch.randint(0, 40, (23, 9), generator=torch.Generator().manual_seed(0))
    names = ["blocks.0.hook_resid_pre", "blocks.2.attn.hook_z"]

    def interrupted():
        for i, batch in enumerate(tokens.split(5)):
            if i == 3:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        stream_activations(tiny, interrupted(), names, tmp_path, batch_size=5)
    partial = load_activations(tmp_path)
    assert not partial.complete and len(partial.shard_files) == 3
    assert not list(tmp_path.glob(".*")), "no temporary files may remain"
    stream_activations(tiny, (b for b in tokens.split(5)), names, tmp_path, batch_size=5)
    cache = load_activations(tmp_path)
    assert cache.complete and cache.rows == 23
    _, direct = cache_activations(tiny, tokens, names)
    for name in names:
        torch.testing.assert_close(cache[name], direct[name], atol=1e-5, rtol=1e-5)


def test_stream_refuses_a_folder_with_other_settings_and_bad_manifests(tiny, tmp_path):
    tokens = torch.randint(0, 40, (4, 9))
    stream_activations(tiny, tokens, ["blocks.0.hook_resid_pre"], tmp_path, batch_size=2)
    with pytest.raises(InputError, match="other settings"):
        stream_activations(tiny, tokens, ["blocks.1.hook_resid_pre"], tmp_path, batch_size=2)
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(InputError, match="line 1"):
        load_activations(tmp_path)


def test_streaming_memory_stays_bounded(tiny_dir, tmp_path):
    """Peak memory when streaming 16x more rows grows far less than the data written."""
    script = textwrap.dedent(
        f"""
        import resource, sys, torch, mechwork
        from mechwork.hooks import stream_activations
        n = int(sys.argv[1])
        model = mechwork.load({str(tiny_dir)!r})
        tokens = (torch.randint(0, 40, (64, 16)) for _ in range(n // 64))
        stream_activations(model, tokens, "blocks.*.hook_resid_*", sys.argv[2], batch_size=64)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )

    def peak_kib(n: int, folder) -> int:
        out = subprocess.run([sys.executable, "-c", script, str(n), str(folder)], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return int(out.stdout.strip().splitlines()[-1])

    small = peak_kib(1024, tmp_path / "small")
    large = peak_kib(16384, tmp_path / "large")
    written = sum(f.stat().st_size for f in (tmp_path / "large").iterdir()) / 1024
    assert written > 200_000  # > 200 MiB of activations went to disk
    assert large - small < 0.15 * written, f"peak grew by {large - small} KiB while writing {written:.0f} KiB"
    manifest = json.loads((tmp_path / "large" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 16384
