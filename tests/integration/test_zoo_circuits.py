"""The constructed zoo models solve their tasks, and their planted ground truth is exactly what matters."""

import pytest
import torch

import mechwork
from mechwork._nodes import edge_nodes
from tests.edge_reference import all_edges, run_with_edges_ablated

CONSTRUCTED = ["induction", "lookup"]


@pytest.fixture(scope="module", params=CONSTRUCTED)
def zoo_case(request):
    entry = mechwork.zoo.get_entry(request.param)
    model = mechwork.load(f"zoo:{request.param}")
    return entry, model, entry.task.data(16, seed=7)


def test_solves_task(zoo_case):
    entry, model, data = zoo_case
    with torch.no_grad():
        clean_logits = model(data.clean)
    assert float(data.accuracy()(clean_logits)) == 1.0
    assert float(data.logit_diff()(clean_logits)) > 9.0


def test_ground_truth_names_real_edges(zoo_case):
    entry, model, _ = zoo_case
    gt = entry.ground_truth()
    edges = set(all_edges(model.cfg.n_layers, model.cfg.n_heads))
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
    others = set(all_edges(model.cfg.n_layers, model.cfg.n_heads)) - gt.edges
    metric = data.logit_diff()
    with torch.no_grad():
        clean_value = float(metric(model(data.clean)))
    kept = float(metric(run_with_edges_ablated(model, data.clean, data.corrupted, others)))
    assert kept == pytest.approx(clean_value, rel=1e-3)
    with torch.no_grad():
        corrupted_value = float(metric(model(data.corrupted)))
    everything = float(metric(run_with_edges_ablated(model, data.clean, data.corrupted, others | gt.edges)))
    assert everything == pytest.approx(corrupted_value, abs=1e-3)


def test_layernorm_trick_is_exact_within_tolerance(zoo_case):
    """Each LayerNorm acts as a near-identity on the planted features (the construction's premise)."""
    _, model, data = zoo_case
    names = [f"blocks.{layer}.ln1.hook_scale" for layer in range(model.cfg.n_layers)]
    _, acts = mechwork.hooks.cache_activations(model, data.clean, names)
    gain = float(model.blocks[0].ln1.weight[0].detach())
    for name in names:
        assert torch.allclose(acts[name] / gain, torch.ones_like(acts[name]), rtol=1e-3)
