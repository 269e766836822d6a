"""Exact activation patching against TransformerLens's own patching module and hand computation.

Sites with a named TransformerLens function are checked against it; ``result`` and ``resid_post``,
which have none, against TransformerLens's ``generic_activation_patch`` with its own patch setters
(the loop its named functions are partials of)."""

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformer_lens import patching

from mechwork.hooks import InputError, activation_patching, run_from
from mechwork.metrics import MetricError
from tests.conftest import no_hooks_left


def _tl_generic(activation_name: str, setter, axes: tuple[str, ...]):
    """TransformerLens's own generic patching loop for a site its module has no named function for."""
    return functools.partial(patching.generic_activation_patch, patch_setter=setter, activation_name=activation_name,
                             index_axis_names=axes)


TL_CASES = [
    ("z", False, patching.get_act_patch_attn_head_out_all_pos),
    ("z", True, patching.get_act_patch_attn_head_out_by_pos),
    ("q", False, patching.get_act_patch_attn_head_q_all_pos),
    ("k", True, patching.get_act_patch_attn_head_k_by_pos),
    ("v", False, patching.get_act_patch_attn_head_v_all_pos),
    ("pattern", False, patching.get_act_patch_attn_head_pattern_all_pos),
    ("resid_pre", True, patching.get_act_patch_resid_pre),
    ("attn_out", True, patching.get_act_patch_attn_out),
    ("mlp_out", True, patching.get_act_patch_mlp_out),
    ("result", False, _tl_generic("result", patching.layer_head_vector_patch_setter, ("layer", "head"))),
    ("result", True, _tl_generic("result", patching.layer_pos_head_vector_patch_setter, ("layer", "pos", "head"))),
    ("resid_post", True, _tl_generic("resid_post", patching.layer_pos_patch_setter, ("layer", "pos"))),
]


@pytest.mark.parametrize("site,per_position,reference", TL_CASES, ids=[f"{c[0]}-{c[1]}" for c in TL_CASES])
@pytest.mark.parametrize("model_name", ["tiny", "induction"])
def test_matches_transformerlens(request, model_name, site, per_position, reference, tiny_pair, tiny_metric,
                                 induction_data):
    model = request.getfixturevalue(model_name)
    if model_name == "tiny":
        (clean, corrupted), metric = tiny_pair, tiny_metric
    else:
        clean, corrupted, metric = induction_data.clean, induction_data.corrupted, induction_data.logit_diff()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        expected = torch.as_tensor(reference(model, corrupted, clean_cache, metric))
    result = activation_patching(model, clean, corrupted, metric, site, per_position=per_position)
    assert result.values.shape == expected.shape
    torch.testing.assert_close(result.values, expected.float(), atol=1e-4, rtol=1e-4)


def test_pattern_by_position_matches_transformerlens(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    with torch.no_grad():
        _, clean_cache = tiny.run_with_cache(clean)
        expected = patching.get_act_patch_attn_head_pattern_by_pos(tiny, corrupted, clean_cache, tiny_metric)
    result = activation_patching(tiny, clean, corrupted, tiny_metric, "pattern", per_position=True)
    # TransformerLens orders (layer, head, dest_pos); ours is (layer, pos, head).
    torch.testing.assert_close(result.values, torch.as_tensor(expected).transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_resid_mid_patches_the_residual_stream(tiny, tiny_pair, tiny_metric):
    """resid_mid patching sets the stream itself: block l's output is mid' + MLP(LN2(mid'))."""
    clean, corrupted = tiny_pair
    result = activation_patching(tiny, clean, corrupted, tiny_metric, "resid_mid", layers=[1])
    with torch.no_grad():
        _, cache = tiny.run_with_cache(clean, names_filter=lambda n: n == "blocks.1.hook_resid_mid")
        mid = cache["blocks.1.hook_resid_mid"]
        block = tiny.blocks[1]
        post = mid + block.mlp(block.ln2(mid))
        expected = tiny_metric(run_from(tiny, post, 2))
    assert float(result.values[1]) == pytest.approx(float(expected), abs=1e-4)


def test_noise_direction_and_normalisation(induction, induction_data):
    d = induction_data
    result = activation_patching(induction, d.clean, d.corrupted, d.logit_diff(), "z", direction="noise")
    norm = result.normalized()
    # Noising the induction head destroys the behaviour; noising a distractor leaves it.
    assert float(norm.values[1, 0]) < 0.05
    assert float(norm.values[1, 1]) == pytest.approx(1.0, abs=1e-3)
    assert result.top(1)[0][0] == {"layer": 1, "head": 0}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), site=st.sampled_from(["z", "resid_pre", "mlp_out", "pattern"]))
def test_patching_a_run_with_its_own_activations_changes_nothing(tiny, seed, site):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 40, (3, 7), generator=g)
    from mechwork.metrics import LogitDiff

    metric = LogitDiff(position=-1, answers=tokens[:, 0], wrong=tokens[:, 1])
    result = activation_patching(tiny, tokens, tokens, metric, site, per_position=True)
    torch.testing.assert_close(result.values, torch.full_like(result.values, result.clean_value), atol=1e-4, rtol=0)


def test_bad_inputs_give_clear_errors(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    with pytest.raises(InputError, match="same shape"):
        activation_patching(tiny, clean, corrupted[:, :-1], tiny_metric)
    with pytest.raises(InputError, match="empty"):
        activation_patching(tiny, clean[:0], corrupted[:0], tiny_metric)
    with pytest.raises(ValueError, match="unknown patching site"):
        activation_patching(tiny, clean, corrupted, tiny_metric, "zz")
    with pytest.raises(InputError, match="out of range"):
        activation_patching(tiny, clean, corrupted, tiny_metric, "z", layers=[7])
    with pytest.raises(MetricError, match="scalar"):
        activation_patching(tiny, clean, corrupted, lambda logits: logits[:, -1, 0], "z")
    assert no_hooks_left(tiny)


def test_no_hooks_leak_after_an_exception(tiny, tiny_pair):
    clean, corrupted = tiny_pair
    calls = []

    def exploding_metric(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("boom")
        return logits[:, -1, 0].mean()

    with pytest.raises(RuntimeError, match="boom"):
        activation_patching(tiny, clean, corrupted, exploding_metric, "z")
    assert no_hooks_left(tiny)
    assert not tiny.cfg.use_attn_result or tiny.cfg.use_split_qkv_input  # flags restored as loaded
    assert tiny.cfg.use_attn_result and tiny.cfg.use_split_qkv_input and tiny.cfg.use_hook_mlp_in


def test_layer_resuming_fast_path_is_used_and_exact(tiny, induction, tiny_pair):
    from mechwork.hooks._runner import embed, uses_fast_path

    assert uses_fast_path(tiny) and uses_fast_path(induction)
    clean, _ = tiny_pair
    with torch.no_grad():
        full = tiny(clean)
        _, cache = tiny.run_with_cache(clean, names_filter=lambda n: n == "blocks.1.hook_resid_pre")
        torch.testing.assert_close(run_from(tiny, embed(tiny, clean), 0), full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_from(tiny, cache["blocks.1.hook_resid_pre"], 1, position=-1), full[:, -1],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_from(tiny, embed(tiny, clean), 0, position=3), full[:, 3], atol=1e-5, rtol=1e-5)
