"""Layers that normalise their heads' summed output before the residual add (Gemma 2 with grouped-query
attention, softcapping and a sliding window; OLMo 2 with no pre-norms and QK norms): an edge from such a
head reaches its destination through the layer's norm (``mechwork/hooks/_head_writes.py``). The engine,
exact patching, EAP and path patching are checked against brute force written with plain TransformerLens
hooks (``tests/edge_reference_passes.py``: passes that run the model's own ``ln1_post`` on the swapped
sum), and the additive reading of those heads -- what mechwork did for every family before -- is caught.
"""

import pytest
import torch

import mechwork
from mechwork.discovery import DiscoveryTask, discover
from mechwork.graph import Graph, ablation_values, masked_forward, run_circuit
from mechwork.hooks import path_patching
from mechwork.hooks._head_writes import HeadWrites, head_writes_of
from mechwork.hooks._runner import embed
from mechwork.metrics import LogitDiff
from tests.edge_reference_passes import run_with_edges_ablated_by_passes
from tests.families import prompts, tiny_family

pytestmark = pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
FAMILIES = ["gemma2", "olmo2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("post_norm")


def _model(name, root):
    return tiny_family(name, root).model


def _metric(clean):
    return LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


class _Additive:
    """The broken variant: read the normed heads as if each added its result to the residual stream."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        writes = head_writes_of(self.model)
        self.model.__dict__["_mechwork_head_writes"] = HeadWrites(tuple(None for _ in writes.norms), writes.attentions)
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("_mechwork_head_writes")


def _normed_head_edges(graph: Graph) -> list[str]:
    return [e for e in graph.edges if e.startswith("blocks.0.attn.head.")]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_heads_are_not_additive_and_the_engine_is_exact(name, root):
    model = _model(name, root)
    assert not head_writes_of(model).additive
    graph = Graph.from_model(model)
    clean, corrupted = prompts()
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        torch.testing.assert_close(run_circuit(model, graph, clean, graph.full_mask(1.0), ablated), model(clean),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_circuit(model, graph, clean, graph.full_mask(0.0), ablated),
                                   model(corrupted), atol=1e-4, rtol=1e-4)
        for seed in (0,):
            drop = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(seed)) < 0.5
            removed = {graph.edges[i] for i in torch.nonzero(drop).flatten().tolist()}
            ours = run_circuit(model, graph, clean, (~drop).float(), ablated)
            reference = run_with_edges_ablated_by_passes(model, clean, corrupted, removed)
            torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
            assert (reference - model(clean)).abs().max() > 1e-2
            with _Additive(model):
                wrong = run_circuit(model, graph, clean, (~drop).float(), ablated)
            assert (wrong - reference).abs().max() > 1e-2, "the additive reading of normed heads went unnoticed"


@pytest.mark.parametrize("name", FAMILIES)
def test_only_edges_from_normed_heads_ablated(name, root):
    """Half of the edges out of layer 0's heads: each destination reads its own swapped sum through the norm."""
    model = _model(name, root)
    graph = Graph.from_model(model)
    clean, corrupted = prompts()
    removed = set(_normed_head_edges(graph)[::2])
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        ours = run_circuit(model, graph, clean, graph.mask_of(set(graph.edges) - removed), ablated)
        reference = run_with_edges_ablated_by_passes(model, clean, corrupted, removed)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    assert (reference - model(clean)).abs().max() > 1e-2


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_equals_one_brute_force_run_per_edge(name, root, monkeypatch):
    model = _model(name, root)
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    metric = _metric(clean)
    task = DiscoveryTask(clean, corrupted, metric)
    scores = discover(model, graph, task, "exact", nodes=False).scores
    # every edge out of one of the normed layer 0's heads (into each kind of destination) and a sample of
    # the rest: one brute-force run per edge is several passes
    checked = [e for e in _normed_head_edges(graph) if e.startswith("blocks.0.attn.head.1->")] + list(graph.edges[::9])
    index = torch.tensor([graph.index(e) for e in checked])
    with torch.no_grad():
        base = float(metric.score(model(clean)[:, -1]))
        reference = torch.tensor([float(metric.score(run_with_edges_ablated_by_passes(
            model, clean, corrupted, {e})[:, -1])) - base for e in checked])
    assert reference.abs().max() > 1e-2
    torch.testing.assert_close(scores[index], reference, atol=1e-4, rtol=1e-4)
    # broken variant: the heads' plain deltas, as if they were added to the residual stream
    monkeypatch.setattr("mechwork.discovery.exact.source_deltas", lambda m, g, outputs, ablated, **_: outputs - ablated)
    wrong = discover(model, graph, task, "exact", nodes=False).scores
    assert (wrong[index] - reference).abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_eap_is_minus_the_mask_gradient_and_eap_ig_one_step_is_eap(name, root):
    model = _model(name, root)
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    metric = _metric(clean)
    task = DiscoveryTask(clean, corrupted, metric)
    scores = discover(model, graph, task, "eap").scores
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    mask = graph.full_mask(1.0).requires_grad_(True)
    metric.score(masked_forward(model, graph, embed(model, clean), mask, ablated, position=-1)).backward()
    normed = torch.tensor([e in set(_normed_head_edges(graph)) for e in graph.edges])
    assert mask.grad[normed].abs().max() > 1e-3
    torch.testing.assert_close(scores, -mask.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(discover(model, graph, task, "eap-ig", steps=1).scores, scores, atol=1e-6, rtol=1e-5)
    with _Additive(model):
        wrong = discover(model, graph, task, "eap").scores
    assert (wrong + mask.grad)[normed].abs().max() > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("receiver", ["blocks.1.attn.head.2.q", "blocks.1.attn.kv_head.1.v", "blocks.1.mlp", "logits"])
def test_path_patching_from_a_normed_head_equals_brute_force(name, receiver, root):
    model = _model(name, root)
    clean, corrupted = prompts()
    metric = _metric(clean)
    if ".kv_head." in receiver and not mechwork.models.structure_of(model).grouped_query:
        receiver = receiver.replace("kv_head.1", "head.1")
    sender = "blocks.0.attn.head.1"
    ours = path_patching(model, clean, corrupted, metric, sender, receiver, direction="noise")
    with torch.no_grad():
        reference = float(metric.score(run_with_edges_ablated_by_passes(
            model, clean, corrupted, {f"{sender}->{receiver}"})[:, -1]))
        base = float(metric.score(model(clean)[:, -1]))
    assert abs(reference - base) > 1e-3
    assert ours == pytest.approx(reference, abs=1e-4)
