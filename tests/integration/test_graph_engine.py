"""The graph and the patch-mask engine, against brute-force edge ablation written with plain TL hooks."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechwork.graph import Graph, GraphError, ablation_values, masked_forward, run_circuit
from mechwork.hooks._runner import embed
from tests.conftest import no_hooks_left
from tests.edge_reference import all_edges, run_with_edges_ablated


def test_graph_matches_the_reference_edge_list_and_mib_count(tiny):
    graph = Graph.from_model(tiny)
    assert set(graph.edges) == set(all_edges(3, 4)) and len(graph.edges) == graph.n_edges
    assert Graph(12, 12).n_edges == 32491  # MIB's edge count for GPT-2 small
    views = graph.split(torch.arange(graph.n_edges, dtype=torch.float))
    assert [v.shape for v in views.attn[2]] == [(4, graph.n_sources_attn(2))] * 3
    assert graph.edges[int(views.attn[1][2][3, 0])] == "input->blocks.1.attn.head.3.v"
    assert graph.edges[int(views.mlp[0][-1])] == "blocks.0.attn.head.3->blocks.0.mlp"
    with pytest.raises(GraphError, match="Did you mean"):
        graph.index("input->blocks.1.attn.head.3.w")
    positional = Graph.from_model(tiny, positions=9)
    assert positional.n_edges == 9 * graph.n_edges and positional.edges[graph.n_edges] == graph.edges[0] + "@1"


@pytest.fixture(scope="module")
def engine(tiny, tiny_pair):
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny)
    return graph, ablation_values(tiny, graph, "corrupted", clean, corrupted)


def test_all_kept_is_clean_and_none_kept_is_corrupted(tiny, tiny_pair, engine):
    graph, ablated = engine
    clean, corrupted = tiny_pair
    with torch.no_grad():
        torch.testing.assert_close(run_circuit(tiny, graph, clean, graph.full_mask(1.0), ablated), tiny(clean))
        torch.testing.assert_close(run_circuit(tiny, graph, clean, graph.full_mask(0.0), ablated), tiny(corrupted),
                                   atol=1e-4, rtol=1e-4)
    assert no_hooks_left(tiny)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.0, 1.0))
def test_any_circuit_equals_brute_force(tiny, tiny_pair, engine, seed, fraction):
    graph, ablated = engine
    clean, corrupted = tiny_pair
    g = torch.Generator().manual_seed(seed)
    drop = torch.rand(graph.n_edges, generator=g) < fraction
    mask = (~drop).float()
    removed = {graph.edges[i] for i in torch.nonzero(drop).flatten().tolist()}
    reference = run_with_edges_ablated(tiny, clean, corrupted, removed)
    with torch.no_grad():
        ours = run_circuit(tiny, graph, clean, mask, ablated)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    # the autograd path (chunked sums) gives the same logits
    grad_mask = mask.clone().requires_grad_(True)
    torch.testing.assert_close(run_circuit(tiny, graph, clean, grad_mask, ablated).detach(), reference,
                               atol=1e-4, rtol=1e-4)


def test_position_resolved_masks_ablate_one_position(tiny, tiny_pair):
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny, positions=clean.shape[1])
    ablated = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    flat = Graph.from_model(tiny)
    # ablating an edge at every position is ablating the edge
    name = "blocks.0.attn.head.1->blocks.2.attn.head.0.k"
    mask = graph.full_mask(1.0)
    for p in range(clean.shape[1]):
        mask[graph.index(f"{name}@{p}")] = 0.0
    flat_mask = flat.full_mask(1.0)
    flat_mask[flat.index(name)] = 0.0
    flat_ablated = ablation_values(tiny, flat, "corrupted", clean, corrupted)
    with torch.no_grad():
        torch.testing.assert_close(run_circuit(tiny, graph, clean, mask, ablated),
                                   run_circuit(tiny, flat, clean, flat_mask, flat_ablated))
        # ablating it at the last position only leaves earlier positions' logits untouched
        only_last = graph.full_mask(1.0)
        only_last[graph.index(f"input->logits@{clean.shape[1] - 1}")] = 0.0
        out = run_circuit(tiny, graph, clean, only_last, ablated)
        full = tiny(clean)
    torch.testing.assert_close(out[:, :-1], full[:, :-1])
    assert not torch.allclose(out[:, -1], full[:, -1])


def test_zero_and_mean_ablation_values(tiny, tiny_pair):
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny)
    zero = ablation_values(tiny, graph, "zero", clean)
    assert zero.abs().sum() == 0 and zero.shape[2] == graph.n_sources
    mean = ablation_values(tiny, graph, "mean", clean, corrupted)
    per_row = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    torch.testing.assert_close(mean[0], per_row.mean(0))
    with torch.no_grad():  # nothing kept under mean ablation: every destination reads the mean outputs
        resid = embed(tiny, clean)
        out = masked_forward(tiny, graph, resid, graph.full_mask(0.0), mean)
    assert torch.allclose(out[0], out[1], atol=1e-4)  # no trace of the prompt is left
    with pytest.raises(Exception, match="unknown ablation"):
        ablation_values(tiny, graph, "median", clean, corrupted)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), layer=st.integers(1, 2), positional=st.booleans())
def test_starting_at_a_layer_equals_the_whole_run(tiny, tiny_pair, seed, layer, positional):
    """With every edge into nodes below ``layer`` kept, a run from the clean residual at ``layer`` gives
    the whole run's logits (what ACDC relies on)."""
    from mechwork.graph import clean_start, masked_forward_from

    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny, positions=clean.shape[1] if positional else None)
    ablated = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    resid = embed(tiny, clean)
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(graph.n_edges, generator=g) < 0.5).float()
    below = graph.endpoint_tensor[:, 1] < graph.n_sources_attn(layer)
    mask[below] = 1.0
    start = clean_start(tiny, graph, resid)
    whole = masked_forward(tiny, graph, resid, mask, ablated, position=-1)
    torch.testing.assert_close(masked_forward_from(tiny, graph, start, layer, mask, ablated, position=-1), whole,
                               atol=1e-5, rtol=1e-5)
    assert whole.sub(masked_forward(tiny, graph, resid, graph.full_mask(1.0), ablated, position=-1)).abs().max() > 1e-3
    mask[below.nonzero()[0]] = 0.0
    with pytest.raises(Exception, match="an edge into a lower layer is ablated"):
        masked_forward_from(tiny, graph, start, layer, mask, ablated)
    assert no_hooks_left(tiny)
