"""Discovery methods: exact against brute force and path patching, EAP against the mask gradient,
ACDC and exact against the planted circuits, resumable ACDC, selection and ROC by hand."""

import dataclasses
import itertools
import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mechwork
from mechwork.discovery import (
    Circuit,
    CircuitFileError,
    DiscoveryTask,
    EdgeScores,
    UnknownMethodError,
    discover,
    find_circuit,
    greedy,
    ground_truth_scores,
    register_method,
    roc_auc,
    task_from_data,
    threshold,
    top_n,
    verify,
)
from mechwork.discovery import acdc as acdc_module
from mechwork.discovery import exact as exact_module
from mechwork.graph import Graph, ablation_values, masked_forward
from mechwork.hooks import path_patching
from mechwork.hooks._runner import embed
from tests.conftest import no_hooks_left
from tests.edge_reference import run_with_edges_ablated


@pytest.fixture(scope="module")
def tiny_task(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    return DiscoveryTask(clean, corrupted, tiny_metric)


def test_exact_equals_brute_force_single_edge_patching(tiny, tiny_pair, tiny_metric, tiny_task):
    graph = Graph.from_model(tiny)
    clean, corrupted = tiny_pair
    result = discover(tiny, graph, tiny_task, "exact", max_rows=40)  # small chunks: several per layer
    with torch.no_grad():
        base = float(tiny_metric(tiny(clean)))
    for name in graph.edges[::7]:
        reference = float(tiny_metric(run_with_edges_ablated(tiny, clean, corrupted, {name}))) - base
        assert result.by_edge()[name] == pytest.approx(reference, abs=2e-4), name
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("position", [-1, 4])
@pytest.mark.parametrize("by_position", [False, True])
def test_exact_layer_pieces_equal_rerunning_the_block(tiny, tiny_pair, position, by_position):
    """exact's default computes only what an ablation changes in its destination layer (one head's q, k
    or v; the MLP alone; the last block at the metric position only); rerunning whole blocks is the
    reference. A metric position before the end checks the causal masking of the pieces."""
    from mechwork.discovery._exact_fast import fast_exact_for

    clean, corrupted = tiny_pair
    metric = mechwork.metrics.LogitDiff(position=position, answers=clean[:, 1], wrong=clean[:, 2])
    graph = Graph.from_model(tiny, positions=clean.shape[1] if by_position else None)
    task = DiscoveryTask(clean, corrupted, metric)
    resid_pre = exact_module._clean_run(tiny, graph, task).resid_pre
    assert fast_exact_for(tiny, resid_pre, position) is not None, "the pieces should reproduce a GPT-2 block"
    pieces = discover(tiny, graph, task, "exact", nodes=False, max_rows=40)  # a fallback would warn: an error here
    whole = discover(tiny, graph, task, "exact", nodes=False, pieces=False, max_rows=40)
    torch.testing.assert_close(pieces.scores, whole.scores, atol=2e-5, rtol=1e-4)
    assert pieces.scores.abs().max() > 1e-3  # the comparison is not between zeros (50x the tolerance)


def test_exact_says_so_when_the_pieces_do_not_reproduce_the_model(tiny, tiny_pair, tiny_task, monkeypatch):
    """Pieces that are wrong for a model (here: attention scaled by 1 instead of 1/sqrt(d_head)) are caught
    on the clean run, with a warning naming the model and the difference; the scores are still exact."""
    from mechwork.discovery import _exact_fast
    from mechwork.models import SlowPathWarning

    reference = discover(tiny, Graph.from_model(tiny), tiny_task, "exact", nodes=False, pieces=False)
    from mechwork.discovery import _layer_pieces

    real = _layer_pieces.LayerWeights.of
    monkeypatch.setattr(_layer_pieces.LayerWeights, "of", classmethod(
        lambda cls, model, layer, gated: dataclasses.replace(real(model, layer, gated), divisor=1.0)))
    resid_pre = exact_module._clean_run(tiny, Graph.from_model(tiny), tiny_task).resid_pre
    with pytest.warns(SlowPathWarning, match=r"do not reproduce .*max difference"):
        assert _exact_fast.fast_exact_for(tiny, resid_pre, -1) is None
    with pytest.warns(SlowPathWarning, match=re.escape(str(tiny.mechwork_spec))):
        fallback = discover(tiny, Graph.from_model(tiny), tiny_task, "exact", nodes=False)
    torch.testing.assert_close(fallback.scores, reference.scores)


def test_exact_by_position_equals_brute_force(tiny, tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny, positions=clean.shape[1])
    result = discover(tiny, graph, DiscoveryTask(clean, corrupted, tiny_metric), "exact", nodes=False)
    ablated = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    base = float(tiny_metric(tiny(clean).detach()))
    for name in ("blocks.0.attn.head.2->blocks.1.attn.head.3.k@4", "input->blocks.2.mlp@8", "blocks.1.mlp->logits@8"):
        mask = graph.full_mask(1.0)
        mask[graph.index(name)] = 0.0
        with torch.no_grad():
            expected = float(tiny_metric(masked_forward(tiny, graph, embed(tiny, clean), mask, ablated))) - base
        assert result.by_edge()[name] == pytest.approx(expected, abs=2e-4)


@pytest.mark.parametrize("sender,receiver", [
    ("input", "blocks.2.attn.head.1.q"), ("blocks.0.attn.head.3", "blocks.1.mlp"),
    ("blocks.1.attn.head.0", "blocks.2.attn.head.2.v"), ("blocks.2.mlp", "logits"),
])
def test_exact_agrees_with_path_patching(tiny, tiny_pair, tiny_metric, tiny_task, sender, receiver):
    clean, corrupted = tiny_pair
    result = discover(tiny, Graph.from_model(tiny), tiny_task, "exact", nodes=False)
    patched = path_patching(tiny, clean, corrupted, tiny_metric, sender, receiver, direction="noise")
    base = float(tiny_metric(tiny(clean).detach()))
    assert result.by_edge()[f"{sender}->{receiver}"] == pytest.approx(patched - base, abs=2e-4)


def test_eap_is_minus_the_mask_gradient(tiny, tiny_pair, tiny_metric, tiny_task):
    """EAP's first-order estimate is exactly -dM/dmask at the all-kept mask of the engine."""
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny)
    ours = discover(tiny, graph, tiny_task, "eap").scores
    mask = graph.full_mask(1.0).requires_grad_(True)
    ablated = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    tiny_metric(masked_forward(tiny, graph, embed(tiny, clean), mask, ablated)).backward()
    torch.testing.assert_close(ours, -mask.grad, atol=1e-4, rtol=1e-3)
    # and EAP-IG with one step at the clean point is EAP
    torch.testing.assert_close(discover(tiny, graph, tiny_task, "eap-ig", steps=1).scores, ours, atol=1e-4, rtol=1e-3)


# Llama's blocks rerun through the bridge (exact, slower: a SlowPathWarning)
_LLAMA = pytest.param("induction_llama", marks=pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning"))


@pytest.mark.parametrize("name", ["induction", "lookup", _LLAMA])
@pytest.mark.parametrize("method", ["exact", "acdc"])
def test_exact_and_acdc_recover_the_planted_circuit(name, method):
    entry = mechwork.zoo.get_entry(name)
    model = mechwork.load(f"zoo:{name}")
    circuit = find_circuit(model, entry.task.data(16, seed=5), method, truth=entry.ground_truth())
    assert circuit.ground_truth["edge_roc_auc"] >= 0.95
    assert circuit.faithfulness["value"] >= 0.9
    if method == "acdc":  # ACDC's own circuit is exactly the planted one
        assert set(circuit.selected) == set(entry.ground_truth().edges)


def test_acdc_resumes_after_an_interruption(induction, induction_data, tmp_path, monkeypatch):
    graph = Graph.from_model(induction)
    task = task_from_data(induction, induction_data, metric="kl")
    uninterrupted = discover(induction, graph, task, "acdc")
    checkpoint = tmp_path / "acdc.json"
    real_call = acdc_module._Loss.__call__
    calls = itertools.count()

    def flaky(self, mask, layer=0):
        if next(calls) == 12:
            raise KeyboardInterrupt
        return real_call(self, mask, layer)

    monkeypatch.setattr(acdc_module._Loss, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        discover(induction, graph, task, "acdc", checkpoint=str(checkpoint))
    state = json.loads(checkpoint.read_text())
    assert 0 < state["done"] < len(acdc_module._destinations(graph))
    monkeypatch.setattr(acdc_module._Loss, "__call__", real_call)
    resumed = discover(induction, graph, task, "acdc", checkpoint=str(checkpoint))
    assert resumed.circuit == uninterrupted.circuit
    torch.testing.assert_close(resumed.scores, uninterrupted.scores)
    other = task_from_data(induction, induction_data, metric="logit_diff")
    with pytest.raises(Exception, match="different ACDC run"):
        discover(induction, graph, other, "acdc", checkpoint=str(checkpoint))


def test_every_method_runs_and_scores_every_edge(lookup):
    entry = mechwork.zoo.get_entry("lookup")
    graph = Graph.from_model(lookup)
    task = task_from_data(lookup, entry.task.data(8, seed=2))
    for method in mechwork.discovery.methods():
        result = discover(lookup, graph, task, method.name)
        assert result.scores.shape == (graph.n_edges,) and torch.isfinite(result.scores).all(), method.name
        assert result.method == method.name and result.seconds > 0
    with pytest.raises(UnknownMethodError, match="eap"):
        discover(lookup, graph, task, "eapp")
    with pytest.raises(TypeError, match="unknown option"):
        discover(lookup, graph, task, "eap", steps=3)
    with pytest.raises(ValueError, match="already registered"):
        register_method("eap", "again")(lambda *a: None)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), min_size=2, max_size=25))
def test_roc_auc_equals_pair_counting(pairs):
    scores, labels = [float(s) for s, _ in pairs], [y for _, y in pairs]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    auc = roc_auc(scores, labels)
    if not pos or not neg:
        assert auc != auc  # NaN
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auc == pytest.approx(wins / (len(pos) * len(neg)))


def test_selection_rules(tiny):
    graph = Graph.from_model(tiny)
    g = torch.Generator().manual_seed(0)
    scores = EdgeScores(graph, torch.randn(graph.n_edges, generator=g), "random")
    assert len(top_n(scores, 12)) == 12
    tau = float(scores.scores.abs().median())
    assert all(abs(scores.by_edge()[e]) >= tau for e in threshold(scores, tau))
    chosen = greedy(scores, 15)
    assert len(chosen) == 15
    # every greedy edge's destination is the logits or a node some chosen edge leaves from
    sources = {e.split("->")[0] for e in chosen}
    for e in chosen:
        dst = e.split("->")[1]
        node = dst.rsplit(".", 1)[0] if dst[-2:] in (".q", ".k", ".v") else dst
        assert node == "logits" or node in sources


def test_ground_truth_scores_by_hand(induction):
    graph = Graph.from_model(induction)
    truth = mechwork.zoo.get_entry("induction").ground_truth()
    perfect = torch.tensor([1.0 if e in truth.edges else 0.0 for e in graph.edges])
    s = ground_truth_scores(EdgeScores(graph, perfect, "oracle"), truth)
    assert s["edge_roc_auc"] == 1.0 and s["precision_at_size"] == 1.0 and s["node_roc_auc"] == 1.0
    s = ground_truth_scores(EdgeScores(graph, -perfect, "anti", ranking="signed"), truth)
    assert s["edge_roc_auc"] == 0.0 and s["recall_at_size"] == 0.0


def test_circuit_file_round_trip_verify_and_errors(lookup, tmp_path):
    entry = mechwork.zoo.get_entry("lookup")
    circuit = find_circuit(lookup, entry.task.data(8, seed=1), "acdc", truth=entry.ground_truth())
    path = circuit.save(tmp_path / "c.json")
    again = Circuit.load(path)
    assert again.selected == circuit.selected and again.edges == circuit.edges
    assert verify(again, lookup).ok
    data = json.loads(path.read_text())
    data["faithfulness"]["value"] -= 0.25  # a file whose claim does not reproduce
    bad = Circuit.from_dict(data)
    result = verify(bad, lookup, rederive=False)
    assert not result.ok and "NOT reproduce" in result.message() and "FAIL faithfulness" in result.message()
    data["model"]["weights_sha256"] = "0" * 64
    assert not verify(Circuit.from_dict(data), lookup).weights_match
    (tmp_path / "broken.json").write_text('{"schema": "mechwork.circuit",\n "version": 1,, }')
    with pytest.raises(CircuitFileError, match="line 2"):
        Circuit.load(tmp_path / "broken.json")
    with pytest.raises(CircuitFileError, match="upgrade mechwork"):
        Circuit.from_dict({**circuit.to_dict(), "version": 99})
    broken = circuit.to_dict()
    del broken["model"]["n_heads"]
    with pytest.raises(CircuitFileError, match="'model': missing key 'n_heads'"):
        Circuit.from_dict(broken)
    broken = circuit.to_dict()
    broken["edges"][3] = {"edge": "x"}
    with pytest.raises(CircuitFileError, match=r"'edges'\[3\]"):
        Circuit.from_dict(broken)


def test_acdc_from_the_destination_layer_finds_the_same_circuit(tiny, tiny_task):
    graph = Graph.from_model(tiny)
    fast = discover(tiny, graph, tiny_task, "acdc", threshold=1e-4)
    whole = discover(tiny, graph, tiny_task, "acdc", threshold=1e-4, from_layer=False)
    assert fast.circuit == whole.circuit and 0 < len(fast.circuit) < graph.n_edges
    torch.testing.assert_close(fast.scores, whole.scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["exact", "acdc"])
def test_verify_rederives_every_stated_number_and_names_the_line_that_disagrees(lookup, method):
    """verify reruns the method from the file: a file edited in any one number a report shows is caught,
    and the failing line is the one edited (the others still agree)."""
    entry = mechwork.zoo.get_entry("lookup")
    circuit = find_circuit(lookup, entry.task.data(8, seed=1), method, truth=entry.ground_truth(), nodes=False) \
        if method == "exact" else find_circuit(lookup, entry.task.data(8, seed=1), method, truth=entry.ground_truth())
    clean = verify(circuit, lookup)
    assert clean.ok and clean.rederived, clean.message()
    stated = {c.what for c in clean.checks}
    assert {"edge scores", "circuit edges", "faithfulness", "faithfulness curve", "CPR", "CMD", "edge ROC AUC",
            "node ROC AUC", "precision at planted size"} <= stated

    def tampered(edit) -> set[str]:
        data = circuit.to_dict()
        edit(data)
        return {c.what for c in verify(Circuit.from_dict(data), lookup).disagreements}

    top = max(range(len(circuit.edges)), key=lambda i: abs(list(circuit.edges.values())[i]))
    assert tampered(lambda d: d["edges"][top].update(score=d["edges"][top]["score"] + 0.5)) >= {"edge scores"}
    assert tampered(lambda d: d["ground_truth"].update(edge_roc_auc=d["ground_truth"]["edge_roc_auc"] - 0.1)) == {
        "edge ROC AUC"}
    assert tampered(lambda d: d["faithfulness"]["curve"].update(cpr=d["faithfulness"]["curve"]["cpr"] + 0.05)) == {
        "CPR"}
    assert tampered(lambda d: d["circuit"].pop()) >= {"circuit edges"}
    assert tampered(lambda d: d["ground_truth"].update(edges=d["ground_truth"]["edges"][1:])) == {"ground-truth edges"}
