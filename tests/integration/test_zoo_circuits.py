"""The constructed zoo models solve their tasks, and their planted ground truth is exactly what matters."""

import pytest
import torch

import mechwork
from mechwork._nodes import edge_nodes
from mechwork.models.zoo.induction import FIRST_A
from tests.edge_reference import all_edges, run_with_edges_ablated

CONSTRUCTED = ["induction", "lookup", "induction_llama"]


@pytest.fixture(scope="module", params=CONSTRUCTED)
def zoo_case(request):
    entry = mechwork.zoo.get_entry(request.param)
    model = mechwork.load(f"zoo:{request.param}")
    return entry, model, entry.task.data(16, seed=7)


def _all_edges(model) -> list[str]:
    return all_edges(model.cfg.n_layers, model.cfg.n_heads, n_kv_heads=getattr(model.cfg, "n_key_value_heads", None))


def test_solves_task(zoo_case):
    entry, model, data = zoo_case
    with torch.no_grad():
        clean_logits = model(data.clean)
    assert float(data.accuracy()(clean_logits)) == 1.0
    assert float(data.logit_diff()(clean_logits)) > 9.0


def test_ground_truth_names_real_edges(zoo_case):
    entry, model, _ = zoo_case
    gt = entry.ground_truth()
    edges = set(_all_edges(model))
    assert gt.edges <= edges and gt.structural_edges <= edges
    assert {n for e in gt.edges for n in edge_nodes(e)} == set(gt.nodes)


def test_ablating_each_planted_edge_breaks_the_task(zoo_case):
    entry, model, data = zoo_case
    metric = data.logit_diff()
    with torch.no_grad():
        clean_value = float(metric(model(data.clean)))
    for e in sorted(entry.ground_truth().edges):
        value = float(metric(run_with_edges_ablated(model, data.clean, data.corrupted, {e})))
        assert value < 0.5 * clean_value, f"ablating planted edge {e} left the metric at {value:.3f}"


def test_ablating_everything_else_keeps_the_task(zoo_case):
    entry, model, data = zoo_case
    gt = entry.ground_truth()
    others = set(_all_edges(model)) - gt.edges
    metric = data.logit_diff()
    with torch.no_grad():
        clean_value = float(metric(model(data.clean)))
    kept = float(metric(run_with_edges_ablated(model, data.clean, data.corrupted, others)))
    assert kept == pytest.approx(clean_value, rel=1e-3)
    with torch.no_grad():
        corrupted_value = float(metric(model(data.corrupted)))
    everything = float(metric(run_with_edges_ablated(model, data.clean, data.corrupted, others | gt.edges)))
    assert everything == pytest.approx(corrupted_value, abs=1e-3)


def _norms(model) -> list[tuple[str, torch.nn.Module]]:
    """Every LayerNorm of the model: ln1 and ln2 of each block, then ln_final, with its scale hook."""
    norms = [(f"blocks.{layer}.{ln}", getattr(model.blocks[layer], ln))
             for layer in range(model.cfg.n_layers) for ln in ("ln1", "ln2")]
    return [(f"{name}.hook_scale", module) for name, module in [*norms, ("ln_final", model.ln_final)]]


def test_layernorm_trick_is_exact_within_tolerance(zoo_case):
    """Every LayerNorm (ln1, ln2 of each block, ln_final) divides by a near-constant that its gain cancels,
    on the clean and the corrupted task prompts: the construction's premise."""
    _, model, data = zoo_case
    norms = _norms(model)
    assert len(norms) == 2 * model.cfg.n_layers + 1
    for tokens in (data.clean, data.corrupted):
        _, acts = mechwork.hooks.cache_activations(model, tokens, [name for name, _ in norms])
        for name, module in norms:
            gain = module.weight.detach()
            assert torch.equal(gain, torch.full_like(gain, float(gain[0]))), f"{name}: the gain is not one constant"
            assert torch.allclose(acts[name] / float(gain[0]), torch.ones_like(acts[name]), rtol=1e-3), name


def test_llama_induction_reads_positions_only_through_rotary():
    """zoo:induction_llama is a real Llama checkpoint whose heads find positions through rotary alone:
    in Hugging Face's own model head 0.0 attends from p to p-1, 0.2 to itself, 0.3 to <bos> and 1.0 from
    the second A to B; with every position id set to 0 (no rotation) head 0.0 cannot tell positions
    apart and the task's logit difference collapses."""
    from transformers import AutoModelForCausalLM

    entry = mechwork.zoo.get_entry("induction_llama")
    hf = AutoModelForCausalLM.from_pretrained(mechwork.zoo.ensure_built(entry), attn_implementation="eager")
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads < hf.config.num_attention_heads
    data = entry.task.data(32, seed=3)
    with torch.no_grad():
        rotated = hf(data.clean, output_attentions=True)
        unrotated = hf(data.clean, position_ids=torch.zeros_like(data.clean), output_attentions=True)
    p = torch.arange(1, data.clean.shape[1])
    layer0, layer1 = rotated.attentions
    assert layer0[:, 0, p, p - 1].min() > 0.99
    assert layer0[:, 2].diagonal(dim1=-2, dim2=-1).min() > 0.99 and layer0[:, 3, :, 0].min() > 0.99
    assert layer1[:, 0, -1, FIRST_A + 1].min() > 0.99
    assert unrotated.attentions[0][:, 0, p, p - 1].max() < 0.51
    clean_value = float(data.logit_diff()(rotated.logits))
    assert clean_value > 9.0 and float(data.logit_diff()(unrotated.logits)) < 0.3 * clean_value
    bridge = mechwork.load("zoo:induction_llama")
    with torch.no_grad():
        torch.testing.assert_close(bridge(data.clean), rotated.logits, atol=1e-4, rtol=1e-4)
