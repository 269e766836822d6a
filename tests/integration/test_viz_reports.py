"""Figures (mechwork.viz) and shared circuit reports (mechwork.reports), checked against the data they draw."""

import html
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import mechwork
from mechwork import viz
from mechwork.discovery import Circuit, find_circuit, roc_auc, verify
from mechwork.discovery._scoring import roc_curve
from mechwork.graph import Graph
from mechwork.hooks import activation_patching, cache_activations
from mechwork.reports import circuit_report

ROOT = Path(__file__).resolve().parents[2]
XSS = "<script>alert('pwned')</script>"


@pytest.fixture(scope="module")
def induction_circuit(induction):
    entry = mechwork.zoo.get_entry("induction")
    data = entry.task.data(8, seed=1)
    return find_circuit(induction, data, "eap", truth=entry.ground_truth(), task_name="induction")


@pytest.fixture(scope="module")
def per_position(induction, induction_data):
    d = induction_data
    return activation_patching(induction, d.clean, d.corrupted, d.logit_diff(), "z", per_position=True).normalized()


def test_heatmaps_draw_the_values_they_are_given(per_position):
    r = per_position  # dims (layer, pos, head)
    layer_head = viz.patching_heatmap(r).data[0]
    assert torch.allclose(torch.tensor(layer_head.z), r.values.sum(1), atol=1e-6)
    layer_pos = viz.patching_heatmap(r, rows="layer", cols="pos").data[0]
    assert torch.allclose(torch.tensor(layer_pos.z), r.values.sum(2), atol=1e-6)
    assert list(layer_pos.x) == [html.escape(label) for label in r.position_labels]
    head_pos = viz.patching_heatmap(r, rows="head", cols="pos", select={"layer": 1})
    assert torch.allclose(torch.tensor(head_pos.data[0].z), r.values[1].T, atol=1e-6)
    assert "layer 1" in head_pos.layout.title.text and "normalised" in head_pos.layout.title.text
    with pytest.raises(ValueError, match="no dim 'head' left"):
        viz.patching_heatmap(r, rows="head", cols="pos", select={"head": 0})


def test_heatmap_labels_escape_token_strings(per_position):
    from dataclasses import replace

    hostile = replace(per_position, position_labels=(XSS,) + per_position.position_labels[1:])
    fig = viz.patching_heatmap(hostile, rows="layer", cols="pos")
    assert XSS not in fig.to_json() and html.escape(XSS) in fig.data[0].x


def test_attention_patterns_are_the_cached_patterns(induction, induction_data):
    tokens = induction_data.clean[:1]
    fig = viz.attention_patterns(induction, tokens[0], [(0, 1), (1, 0)])
    _, cache = cache_activations(induction, tokens, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    for trace, (layer, head) in zip(fig.data, [(0, 1), (1, 0)], strict=True):
        expected = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]
        assert torch.allclose(torch.tensor(trace.z), expected, atol=1e-6)
        assert len(trace.x) == len(trace.y) == tokens.shape[1]
    with pytest.raises(ValueError, match="no head 5.0"):
        viz.attention_patterns(induction, tokens[0], [(5, 0)])


def test_circuit_graph_filters_collapses_and_marks_ports():
    graph = Graph(12, 12)  # GPT-2 small: 32,491 edges
    g = torch.Generator().manual_seed(0)
    scores = dict(zip(graph.edges, torch.randn(graph.n_edges, generator=g).tolist(), strict=True))
    fig = viz.circuit_graph(scores, 12, 12, max_edges=250)
    hover = next(t for t in fig.data if t.name == "edges")
    assert len(hover.text) == 250
    strongest = sorted(scores, key=lambda e: -abs(scores[e]))[:250]
    assert {t.split("<br>")[0] for t in hover.text} == {html.escape(e) for e in strongest}
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert sum(c[1] for c in nodes.customdata) == 2 * (graph.n_edges - 250)  # each hidden edge counted at both ends
    dashes = {t.line.dash for t in fig.data if t.mode == "lines" and t.name != "chance"}
    assert {"dot", "dash", "solid"} <= dashes  # q, k, v/residual drawn differently
    assert "32491 edges" in fig.layout.title.text or "of 32491" in fig.layout.title.text


def test_circuit_graph_of_a_circuit_draws_its_edges(induction_circuit):
    fig = viz.circuit_graph(induction_circuit, only_circuit=True)
    hover = next(t for t in fig.data if t.name == "edges")
    assert {t.split("<br>")[0] for t in hover.text} == {html.escape(e) for e in induction_circuit.selected}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_roc_curve_area_equals_roc_auc(pairs):
    scores, labels = [float(s) for s, _ in pairs], [y for _, y in pairs]
    fpr, tpr = roc_curve(scores, labels)
    auc = roc_auc(scores, labels)
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(len(fpr) - 1))
    if auc == auc:  # both classes present
        assert area == pytest.approx(auc)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_curves_and_leaderboard_figures(induction_circuit):
    c = induction_circuit
    fig = viz.faithfulness_curves({"eap": c, "again": c.faithfulness["curve"]})
    assert list(fig.data[0].y) == c.faithfulness["curve"]["faithfulness"] and fig.layout.xaxis.type == "log"
    assert f"CPR {c.faithfulness['curve']['cpr']:.3f}" in fig.data[0].name
    roc = viz.roc_curves({"eap": c})
    assert list(roc.data[0].x) == c.ground_truth["edge_roc"]["fpr"]
    rows = [{"model": m, "method": k, "edge_roc_auc": 0.5 + i / 10, "cpr": 0.1, "cmd": 0.2, "seconds": 1.0}
            for i, (m, k) in enumerate([("induction", "eap"), ("induction", "acdc"), ("lookup", "eap")])]
    bars = viz.leaderboard_bars(rows)
    auc_bars = [t for t in bars.data if t.xaxis == "x"]
    assert {t.name for t in auc_bars} == {"induction", "lookup"}
    lookup = next(t for t in auc_bars if t.name == "lookup")
    assert list(lookup.x) == ["acdc", "eap"] and list(lookup.y) == [None, pytest.approx(0.7)]


def test_static_export_writes_png(tmp_path, chromium_path, induction_circuit):
    fig = viz.faithfulness_curves({"eap": induction_circuit})
    png = viz.save_figure(fig, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_save_as_html_and_static_export_says_why_it_cannot(tmp_path, monkeypatch, induction_circuit):
    fig = viz.faithfulness_curves({"eap": induction_circuit})
    assert viz.save_figure(fig, tmp_path / "f.html").read_text().count("<script") >= 2  # plotly.js inlined
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium-here"))
    with pytest.raises(viz.StaticExportUnavailable, match="headless Chromium"):
        viz.save_figure(fig, tmp_path / "g.svg")
    with pytest.raises(ValueError, match="unknown figure format"):
        viz.save_figure(fig, tmp_path / "g.bmp")


def hostile_circuit(circuit: Circuit) -> Circuit:
    """The circuit with user text that would run as script if it reached the page unescaped."""
    data = circuit.to_dict()
    data["task"]["name"] = XSS
    data["options"] = {"note": XSS}
    return Circuit.from_dict(data)


class _HostileTokenizer:
    def convert_ids_to_tokens(self, ids):
        return [XSS if i == ids[0] else f"t{i}" for i in ids]


def test_report_is_self_contained_and_escapes_every_string(induction_circuit):
    page = circuit_report(hostile_circuit(induction_circuit), tokenizer=_HostileTokenizer())
    assert XSS not in page and html.escape(XSS) in page
    assert "<script src" not in page and "<link" not in page  # nothing fetched: it opens offline
    assert page.count("Plotly.newPlot") >= 3
    assert induction_circuit.model["weights_sha256"] in page
    for edge in induction_circuit.selected:
        assert html.escape(edge) in page


def test_report_table_ranks_signed_scores_for_acdc(induction, tmp_path):
    entry = mechwork.zoo.get_entry("induction")
    circuit = find_circuit(induction, entry.task.data(8), "acdc", truth=entry.ground_truth())
    page = circuit_report(circuit)
    table = page.split("id='edge-table'")[1]
    first_rows = [line.split("<td>")[1].split("</td>")[0] for line in table.split("<tr class=")[1:1 + circuit.n_edges]]
    assert set(first_rows) == {html.escape(e) for e in circuit.selected}
    assert "ranked by score" in page


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")  # zoo:induction_llama reruns blocks
def test_every_shared_circuit_file_verifies():
    files = sorted((ROOT / "circuits").glob("*.json"))
    assert files, "circuits/ holds no circuit files: run `make circuits`"
    for path in files:
        circuit = Circuit.load(path)
        result = verify(circuit)
        assert result.ok, f"{path.name}: {result.message()}"
        assert path.with_suffix(".html").exists(), f"{path.name} has no HTML report beside it"
        assert path.name in (ROOT / "circuits" / "README.md").read_text()

