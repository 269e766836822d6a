"""Path patching against TransformerLens's direct-path patching; attribution against exact patching."""

import pytest
import torch
from transformer_lens import patching

from mechwork.hooks import InputError, activation_patching, attribution_patching, path_patching, path_patching_sweep
from tests.edge_reference import run_with_edges_ablated


@pytest.mark.parametrize("port", ["q", "k", "v"])
@pytest.mark.parametrize("sender", [(0, 1), (1, 2)])
def test_path_sweep_matches_transformerlens(tiny, tiny_pair, tiny_metric, port, sender):
    clean, corrupted = tiny_pair
    with torch.no_grad():
        _, clean_cache = tiny.run_with_cache(clean)
        _, corrupted_cache = tiny.run_with_cache(corrupted)
        expected = patching.get_act_patch_direct_path(
            tiny, corrupted, clean_cache, corrupted_cache, tiny_metric, *sender, component=port, verbose=False
        )
    result = path_patching_sweep(tiny, clean, corrupted, tiny_metric, f"blocks.{sender[0]}.attn.head.{sender[1]}", port)
    later = slice(sender[0] + 1, None)
    torch.testing.assert_close(result.values[later], expected[later].float(), atol=1e-4, rtol=1e-4)
    assert torch.isnan(result.values[: sender[0] + 1]).all()


@pytest.mark.parametrize(
    "sender,receiver",
    [
        ("input", "blocks.1.attn.head.0.v"),
        ("blocks.0.attn.head.3", "blocks.0.mlp"),
        ("blocks.0.mlp", "blocks.2.attn.head.1.k"),
        ("blocks.1.attn.head.2", "logits"),
        ("blocks.2.mlp", "logits"),
    ],
)
def test_single_path_equals_brute_force_edge_patch(tiny, tiny_pair, tiny_metric, sender, receiver):
    """Denoising one path = running corrupted with only that edge fed its clean value."""
    clean, corrupted = tiny_pair
    ours = path_patching(tiny, clean, corrupted, tiny_metric, sender, receiver)
    # Reference: the clean prompt with every *other* edge into nothing... simpler: run corrupted prompts
    # and "ablate" the one edge towards the clean run.
    reference = run_with_edges_ablated(tiny, corrupted, clean, {f"{sender}->{receiver}"})
    assert ours == pytest.approx(float(tiny_metric(reference)), abs=1e-4)


def test_invalid_paths_are_refused(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    with pytest.raises(InputError, match="forward"):
        path_patching(tiny, clean, corrupted, tiny_metric, "blocks.2.attn.head.0", "blocks.1.attn.head.0.q")
    with pytest.raises(InputError, match=r"\.q, \.k or \.v"):
        path_patching(tiny, clean, corrupted, tiny_metric, "input", "blocks.1.attn.head.0")
    with pytest.raises(ValueError, match="not a node name"):
        path_patching(tiny, clean, corrupted, tiny_metric, "blocks.one", "logits")


def test_attribution_is_exact_where_the_model_is_linear(induction, induction_data):
    """Layer-1 heads of zoo:induction reach the logits linearly (LayerNorm is a constant scaling there)."""
    d = induction_data
    exact = activation_patching(induction, d.clean, d.corrupted, d.logit_diff(), "z")
    approx = attribution_patching(induction, d.clean, d.corrupted, d.logit_diff(), "z")
    torch.testing.assert_close(approx.values[1], exact.values[1], atol=2e-2, rtol=0)
    assert approx.corrupted_value == pytest.approx(exact.corrupted_value, abs=1e-4)


def test_attribution_agrees_with_exact_patching_to_first_order(tiny, tiny_pair, tiny_metric):
    """Corrupted = clean except the token at position -2. Patching the whole residual stream restores the
    clean run at every layer (so its effects cannot be correlated: they are all the same). Per position,
    where clean and corrupted activations agree (before the change) both effects are zero; where their
    difference is small — component outputs, and the residual stream at the metric's position, which sees
    the change only through attention — the first-order estimate matches exact patching within 2 % of the
    largest effect. (The residual at the changed position itself holds a whole token swap: not small.)"""
    clean, _ = tiny_pair
    corrupted = clean.clone()
    corrupted[:, -2] = (corrupted[:, -2] + 1) % 40
    whole = activation_patching(tiny, clean, corrupted, tiny_metric, "resid_pre")
    torch.testing.assert_close(whole.values, torch.full_like(whole.values, whole.clean_value), atol=1e-6, rtol=0)
    for site in ("z", "attn_out", "mlp_out", "resid_pre"):
        exact = activation_patching(tiny, clean, corrupted, tiny_metric, site, per_position=True)
        approx = attribution_patching(tiny, clean, corrupted, tiny_metric, site, per_position=True)
        assert exact.dims[:2] == approx.dims[:2] == ("layer", "pos")
        effect_exact = exact.values - exact.corrupted_value  # [layer, pos] or [layer, pos, head]
        effect_approx = approx.values - approx.corrupted_value
        scale = float(effect_exact.abs().max())
        assert scale > 1e-5, f"{site}: no effect to compare"
        torch.testing.assert_close(effect_exact[:, :-2], torch.zeros_like(effect_exact[:, :-2]), atol=1e-2 * scale,
                                   rtol=0)
        torch.testing.assert_close(effect_approx[:, :-2], torch.zeros_like(effect_approx[:, :-2]),
                                   atol=1e-2 * scale, rtol=0)
        small = slice(-1, None) if site == "resid_pre" else slice(-2, None)
        exact_small, approx_small = effect_exact[:, small].flatten(), effect_approx[:, small].flatten()
        assert exact_small.std() > 0.1 * scale, f"{site}: the effects do not vary across sites"
        error = float((approx_small - exact_small).abs().max())
        assert error <= 0.02 * scale, f"{site}: first-order error {error:.3g} against effects up to {scale:.3g}"


def test_attribution_leaves_parameters_trainable(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    before = [p.requires_grad for p in tiny.parameters()]
    attribution_patching(tiny, clean, corrupted, tiny_metric, "result")
    assert [p.requires_grad for p in tiny.parameters()] == before
