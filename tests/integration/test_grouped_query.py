"""Grouped-query attention (Llama-style, 4 query heads over 2 key/value heads): k and v edges end at the
key/value heads, and the engine, exact patching, EAP, ACDC, greedy selection and the k/v patching sites
agree with brute force written with plain TransformerLens hooks."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mechwork.discovery import DiscoveryTask, discover
from mechwork.discovery._select import greedy
from mechwork.graph import Graph, GraphError, ablation_values, masked_forward, run_circuit
from mechwork.hooks import activation_patching, attribution_patching
from mechwork.hooks._runner import embed
from mechwork.metrics import LogitDiff
from tests.edge_reference import all_edges, run_with_edges_ablated
from tests.families import boot_perturbed

pytestmark = pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
N_LAYERS, N_HEADS, N_KV = 3, 4, 2


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
                      num_key_value_heads=N_KV, intermediate_size=64, max_position_embeddings=16,
                      initializer_range=0.2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    return boot_perturbed(model, tmp_path_factory.mktemp("llama"), lambda name: "norm" in name)


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 40, (3, 7), generator=g), torch.randint(0, 40, (3, 7), generator=g)


def _metric(clean):
    return LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def test_k_and_v_edges_end_at_key_value_heads(llama):
    graph = Graph.from_model(llama)
    assert (graph.grouped, graph.kv_heads) == (True, N_KV)
    assert set(graph.edges) == set(all_edges(N_LAYERS, N_HEADS, n_kv_heads=N_KV))
    assert len(graph.edges) == graph.n_edges
    assert "input->blocks.1.attn.kv_head.1.v" in graph.edges and "input->blocks.1.attn.head.3.q" in graph.edges
    with pytest.raises(GraphError):  # a query head has no key input of its own
        graph.index("input->blocks.1.attn.head.3.k")
    # query heads 2 and 3 read key/value head 1 (Hugging Face's repeat_kv layout)
    kv1 = graph.nodes.index("blocks.1.attn.kv_head.1")
    assert graph.readers(kv1) == (graph.head_source(1, 2), graph.head_source(1, 3))
    assert kv1 in graph.destinations_of(graph.head_source(1, 3))
    views = graph.split(torch.arange(graph.n_edges, dtype=torch.float))
    assert [tuple(v.shape) for v in views.attn[2]] == [(4, graph.n_sources_attn(2)), (2, graph.n_sources_attn(2)),
                                                       (2, graph.n_sources_attn(2))]
    assert graph.edges[int(views.attn[2][1][1, 0])] == "input->blocks.2.attn.kv_head.1.k"


def _engine_matches_brute_force(llama, pair, removed: set[str]) -> torch.Tensor:
    """The engine with ``removed`` ablated gives the logits brute-force TL hooks give; returns the latter."""
    clean, corrupted = pair
    graph = Graph.from_model(llama)
    ablated = ablation_values(llama, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        ours = run_circuit(llama, graph, clean, graph.mask_of(set(graph.edges) - removed), ablated)
        reference = run_with_edges_ablated(llama, clean, corrupted, removed)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    return reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_circuits_equal_brute_force(llama, pair, seed):
    graph = Graph.from_model(llama)
    drop = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.3
    removed = {graph.edges[i] for i in torch.nonzero(drop).flatten().tolist()}
    reference = _engine_matches_brute_force(llama, pair, removed)
    with torch.no_grad():
        assert (reference - llama(pair[0])).abs().max() > 1e-2


def test_only_key_value_edges_ablated_equals_brute_force(llama, pair):
    """Every k/v edge ablated, nothing else: what a per-query-head layout would get wrong."""
    kv_edges = {e for e in Graph.from_model(llama).edges if ".kv_head." in e}
    reference = _engine_matches_brute_force(llama, pair, kv_edges)
    with torch.no_grad():
        assert (reference - llama(pair[0])).abs().max() > 1e-2


def test_exact_equals_one_brute_force_run_per_edge(llama, pair):
    clean, corrupted = pair
    graph = Graph.from_model(llama)
    metric = _metric(clean)
    scores = discover(llama, graph, DiscoveryTask(clean, corrupted, metric), "exact", nodes=False)
    with torch.no_grad():
        base = float(metric.score(llama(clean)[:, -1]))
        reference = torch.tensor([float(metric.score(run_with_edges_ablated(llama, clean, corrupted, {e})[:, -1]))
                                  - base for e in graph.edges])
    assert reference.abs().max() > 1e-2
    torch.testing.assert_close(scores.scores, reference, atol=1e-4, rtol=1e-4)


def test_eap_is_minus_the_mask_gradient(llama, pair):
    clean, corrupted = pair
    graph = Graph.from_model(llama)
    metric = _metric(clean)
    scores = discover(llama, graph, DiscoveryTask(clean, corrupted, metric), "eap")
    ablated = ablation_values(llama, graph, "corrupted", clean, corrupted)
    mask = graph.full_mask(1.0).requires_grad_(True)
    metric.score(masked_forward(llama, graph, embed(llama, clean), mask, ablated, position=-1)).backward()
    kv = torch.tensor([".kv_head." in e for e in graph.edges])
    assert mask.grad[kv].abs().max() > 1e-3
    torch.testing.assert_close(scores.scores, -mask.grad, atol=1e-5, rtol=1e-4)


def test_acdc_circuit_is_what_brute_force_computes(llama, pair):
    clean, corrupted = pair
    graph = Graph.from_model(llama)
    task = DiscoveryTask(clean, corrupted, _metric(clean))
    found = discover(llama, graph, task, "acdc", threshold=0.02)
    assert 0 < len(found.circuit) < graph.n_edges
    # a key/value head is kept only while a query head of its group still reaches the logits
    kept_sources = {e.split("->")[0] for e in found.circuit}
    for e in found.circuit:
        dst = e.split("->")[1]
        if ".kv_head." in dst:
            layer, group = int(dst.split(".")[1]), int(dst.split(".")[4])
            assert {f"blocks.{layer}.attn.head.{h}" for h in (2 * group, 2 * group + 1)} & kept_sources, e
    _engine_matches_brute_force(llama, pair, set(graph.edges) - set(found.circuit))


def test_greedy_growth_reaches_key_value_edges(llama, pair):
    clean, corrupted = pair
    graph = Graph.from_model(llama)
    scores = discover(llama, graph, DiscoveryTask(clean, corrupted, _metric(clean)), "eap")
    assert greedy(scores, graph.n_edges) == frozenset(graph.edges)  # every edge lies on a path to the logits


@pytest.mark.parametrize("site,hook", [("k", "hook_k"), ("v", "hook_v")])
def test_key_value_patching_sites_have_one_entry_per_key_value_head(llama, pair, site, hook):
    clean, corrupted = pair
    metric = _metric(clean)
    ours = activation_patching(llama, clean, corrupted, metric, site)
    assert ours.dims == ("layer", "head") and tuple(ours.values.shape) == (N_LAYERS, N_KV)
    with torch.no_grad():  # denoising: the corrupted run with one clean key/value head written in
        _, cache = llama.run_with_cache(clean)
        reference = torch.zeros(N_LAYERS, N_KV)
        for layer in range(N_LAYERS):
            name = f"blocks.{layer}.attn.{hook}"
            for g in range(N_KV):
                def patch(act, hook, g=g, name=name):
                    act = act.clone()
                    act[:, :, g] = cache[name][:, :, g]
                    return act
                logits = llama.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])
                reference[layer, g] = float(metric.score(logits[:, -1]))
    assert float(reference.max() - reference.min()) > 1e-3
    torch.testing.assert_close(ours.values.float(), reference, atol=1e-4, rtol=1e-4)
    estimate = attribution_patching(llama, clean, corrupted, metric, site)
    assert tuple(estimate.values.shape) == (N_LAYERS, N_KV) and bool(torch.isfinite(estimate.values).all())


def test_circuit_graph_places_key_value_heads(llama, pair):
    from mechwork.viz import circuit_graph

    clean, corrupted = pair
    graph = Graph.from_model(llama)
    scores = discover(llama, graph, DiscoveryTask(clean, corrupted, _metric(clean)), "eap")
    fig = circuit_graph(scores, max_edges=graph.n_edges)
    labels = {t for trace in fig.data for t in (trace.text or ()) if isinstance(t, str)}
    assert any(label.startswith("kv") for label in labels), sorted(labels)[:10]
