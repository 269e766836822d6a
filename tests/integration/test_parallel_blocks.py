"""Parallel attention/MLP blocks (GPT-NeoX / Pythia): the graph has no same-layer head -> MLP edges,
and the patch-mask engine and exact patching agree with brute-force TransformerLens hooks."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import mechwork
from mechwork.discovery import DiscoveryTask, discover
from mechwork.graph import Graph, GraphError, ablation_values, run_circuit
from tests.edge_reference import all_edges, run_with_edges_ablated
from tests.families import boot_perturbed

# Rotary models resume through the bridge's start_at_layer (blocks not declared resumable): that says so.
pytestmark = pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")


@pytest.fixture(scope="module")
def pythia(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16, use_parallel_residual=True,
                        initializer_range=0.2)  # weights large enough that heads matter (0.02 hides them)
    model = GPTNeoXForCausalLM(cfg)
    return boot_perturbed(model, tmp_path_factory.mktemp("pythia"),
                          lambda name: name.endswith("bias") or "layernorm" in name)


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 40, (3, 7), generator=g), torch.randint(0, 40, (3, 7), generator=g)


def test_graph_has_the_parallel_block_edges_and_no_others(pythia):
    graph = Graph.from_model(pythia)
    assert graph.parallel
    assert set(graph.edges) == set(all_edges(3, 4, parallel=True)) and len(graph.edges) == graph.n_edges
    assert len(set(all_edges(3, 4)) - set(graph.edges)) == 3 * 4  # one per layer and head
    with pytest.raises(GraphError):  # an edge the architecture does not have cannot be ablated
        graph.index("blocks.1.attn.head.2->blocks.1.mlp")


def test_all_kept_is_clean_none_kept_is_corrupted(pythia, pair):
    clean, corrupted = pair
    graph = Graph.from_model(pythia)
    ablated = ablation_values(pythia, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        torch.testing.assert_close(run_circuit(pythia, graph, clean, graph.full_mask(1.0), ablated), pythia(clean),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_circuit(pythia, graph, clean, graph.full_mask(0.0), ablated),
                                   pythia(corrupted), atol=1e-4, rtol=1e-4)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), fraction=st.floats(0.05, 0.95))
def test_any_circuit_equals_brute_force(pythia, pair, seed, fraction):
    clean, corrupted = pair
    graph = Graph.from_model(pythia)
    ablated = ablation_values(pythia, graph, "corrupted", clean, corrupted)
    drop = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed)) < fraction
    removed = {graph.edges[i] for i in torch.nonzero(drop).flatten().tolist()}
    reference = run_with_edges_ablated(pythia, clean, corrupted, removed)
    with torch.no_grad():
        ours = run_circuit(pythia, graph, clean, (~drop).float(), ablated)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_a_sequential_graph_on_a_parallel_model_is_caught_by_the_reference(pythia, pair):
    """The broken variant: GPT-2's graph on Pythia (the bug this guards against) disagrees with brute
    force when a same-layer head -> MLP edge is 'ablated' (it ablates something that is not there)."""
    clean, corrupted = pair
    wrong = Graph(3, 4, parallel=False)
    ablated = ablation_values(pythia, wrong, "corrupted", clean, corrupted)
    fake = [e for e in wrong.edges if e.startswith("blocks.1.attn.head.") and e.endswith("->blocks.1.mlp")]
    mask = wrong.full_mask(1.0)
    for name in fake:
        mask[wrong.index(name)] = 0.0
    with torch.no_grad():
        ours = run_circuit(pythia, wrong, clean, mask, ablated)
    reference = run_with_edges_ablated(pythia, clean, corrupted, set())  # those edges do not exist: nothing ablated
    assert (ours - reference).abs().max() > 2e-2  # 100x the tolerance the real graph meets


def test_exact_patching_equals_brute_force(pythia, pair):
    clean, corrupted = pair
    metric = mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])
    graph = Graph.from_model(pythia)
    scores = discover(pythia, graph, DiscoveryTask(clean, corrupted, metric), "exact", nodes=False).by_edge()
    with torch.no_grad():
        base = float(metric(pythia(clean)))
    for name in graph.edges[::23]:
        reference = float(metric(run_with_edges_ablated(pythia, clean, corrupted, {name}))) - base
        assert scores[name] == pytest.approx(reference, abs=2e-4), name


@pytest.mark.parametrize("method", [m.name for m in mechwork.discovery.methods()])
def test_every_method_runs_and_its_circuit_is_what_brute_force_computes(pythia, pair, method):
    """Each registered method on the parallel model: scores for exactly the graph's edges, and its top
    edges as a circuit give, through the engine, the logits brute-force TL hooks give."""
    clean, corrupted = pair
    metric = mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])
    graph = Graph.from_model(pythia)
    options = {"steps": 20} if method == "learned-mask" else {}
    scores = discover(pythia, graph, DiscoveryTask(clean, corrupted, metric), method, **options)
    assert scores.scores.shape == (graph.n_edges,) and bool(torch.isfinite(scores.scores).all())
    kept = set(mechwork.discovery.top_n(scores, graph.n_edges // 4))
    ablated = ablation_values(pythia, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        ours = run_circuit(pythia, graph, clean, graph.mask_of(kept), ablated)
    reference = run_with_edges_ablated(pythia, clean, corrupted, set(graph.edges) - kept)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
