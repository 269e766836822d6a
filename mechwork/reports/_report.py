"""A shared circuit report: one self-contained HTML file (plotly.js inlined) that opens offline.

Every string that comes from the circuit file, the model or the user passes through ``html.escape``
before it reaches the page; figures carry their text as JSON, which plotly writes with ``<`` escaped.
"""

from __future__ import annotations

import html
import json
import os
from importlib.metadata import version
from pathlib import Path

from .._io import atomic_write_text
from ..discovery import Circuit
from ..viz import circuit_graph, faithfulness_curves, roc_curves
from ._page import figure_html, html_page

_MAX_TABLE_EDGES = 1000
_MAX_PROMPTS = 4

def _e(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _token_strings(ids: list[int], tokenizer) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return list(tokenizer.convert_ids_to_tokens(ids))


def _prompts_section(circuit: Circuit, tokenizer) -> str:
    prompts = circuit.task.get("prompts", {})
    clean, corrupted = prompts.get("clean", []), prompts.get("corrupted", [])
    answers, wrong = prompts.get("answers", []), prompts.get("wrong", [])
    if not clean:
        return "<p class='note'>The circuit file carries no prompts.</p>"
    items = []
    for i in range(min(_MAX_PROMPTS, len(clean))):
        def row(ids):
            return "".join(f"<span>{_e(t)}</span>" for t in _token_strings(ids, tokenizer))
        answer = _token_strings([answers[i], wrong[i]], tokenizer) if i < len(answers) else ["?", "?"]
        items.append(f"<li><div class='tokens'>clean: {row(clean[i])}</div>"
                     f"<div class='tokens'>corrupted: {row(corrupted[i])}</div>"
                     f"<div>answer <code>{_e(answer[0])}</code> vs <code>{_e(answer[1])}</code></div></li>")
    decoded = "" if tokenizer is not None else " (token ids: the model's tokenizer was not available)"
    return (f"<p class='note'>{len(clean)} prompt pairs; the first {len(items)} shown{decoded}.</p>"
            f"<ol>{''.join(items)}</ol>")


def _edge_table(circuit: Circuit) -> str:
    chosen = set(circuit.selected)
    signed = circuit.provenance.get("ranking") == "signed"  # e.g. ACDC: a larger score is more important
    ranked = sorted(circuit.edges.items(), key=lambda kv: -(kv[1] if signed else abs(kv[1])))
    shown = ranked[:_MAX_TABLE_EDGES]
    rows = "".join(
        f"<tr class='{'in-circuit' if name in chosen else ''}'><td data-value='{rank}'>{rank}</td>"
        f"<td>{_e(name)}</td><td data-value='{score!r}'>{score:.6g}</td>"
        f"<td>{'yes' if name in chosen else 'no'}</td></tr>"
        for rank, (name, score) in enumerate(shown, start=1)
    )
    order = "score" if signed else "|score|"
    note = (f"The {len(shown)} edges with the largest {order} of {len(ranked)}; " if len(ranked) > len(shown)
            else f"All {len(ranked)} scored edges, ranked by {order}; ")
    return (f"<p class='note'>{note}click a header to sort.</p><table class='sortable' id='edge-table'>"
            f"<thead><tr><th>rank</th><th>edge</th><th>score</th><th>in circuit</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _ground_truth_section(circuit: Circuit) -> str:
    gt = circuit.ground_truth
    if not gt:
        return "<p class='note'>No planted ground truth is known for this model and task.</p>"
    numbers = _table({"edge ROC AUC": gt.get("edge_roc_auc"), "node ROC AUC": gt.get("node_roc_auc"),
                      "precision at size": gt.get("precision_at_size"), "recall at size": gt.get("recall_at_size"),
                      "planted edges": len(gt.get("edges", []))})
    missed = sorted(set(gt.get("edges", [])) - {e.split("@")[0] for e in circuit.selected})
    missed_html = ("<p>Planted edges not in the circuit: " + ", ".join(f"<code>{_e(e)}</code>" for e in missed)
                   + "</p>") if missed else "<p>Every planted edge is in the circuit.</p>"
    roc = figure_html(roc_curves({circuit.method: circuit})) if "edge_roc" in gt else ""
    return numbers + missed_html + roc


def circuit_report(circuit: Circuit, *, tokenizer=None, title: str | None = None) -> str:
    """The report's HTML text."""
    f = circuit.faithfulness
    curve = f.get("curve", {})
    task = circuit.task
    heading = title or f"{circuit.method} circuit for {task.get('name') or 'a task'} on {circuit.model['spec']}"
    summary = _table({
        "model": circuit.model["spec"], "layers × heads": f"{circuit.model['n_layers']} × {circuit.model['n_heads']}",
        "task": task.get("name"), "metric": task.get("metric"), "ablation": task.get("ablation"),
        "answer position": task.get("position"), "method": circuit.method,
        "edges in circuit": f"{circuit.n_edges} of {len(circuit.edges)}",
        "faithfulness": f.get("value"), "metric, full model": f.get("full_value"),
        "metric, all edges ablated": f.get("empty_value"), "CPR": curve.get("cpr"), "CMD": curve.get("cmd"),
    })
    p = circuit.provenance
    provenance = _table({
        "mechwork (found with)": p.get("mechwork"), "mechwork (report)": version("mechwork"),
        "torch": p.get("torch"), "python": p.get("python"), "created": p.get("created"),
        "seed": p.get("seed", task.get("seed")), "weights sha256": circuit.model.get("weights_sha256"),
        "method options": json.dumps(circuit.options, sort_keys=True),
        "selection": json.dumps(circuit.selection, sort_keys=True), "discovery seconds": p.get("seconds"),
    })
    graph = circuit_graph(circuit, max_edges=200, title=f"{circuit.n_edges}-edge circuit (bold) among the "
                                                        "strongest-scored edges")
    sections = [
        ("Model and task", summary),
        ("Circuit graph", figure_html(graph)),
        ("Faithfulness", figure_html(faithfulness_curves({circuit.method: circuit})) if curve else ""),
        ("Ground truth", _ground_truth_section(circuit)),
        ("Prompts", _prompts_section(circuit, tokenizer)),
        ("Edges", _edge_table(circuit)),
        ("Provenance", provenance + "<p class='note'>Re-check this circuit with <code>mechwork verify "
                                    "CIRCUIT.json</code>.</p>"),
    ]
    return html_page(heading, sections)


def write_report(circuit: Circuit, path: str | os.PathLike, *, tokenizer=None, title: str | None = None) -> Path:
    """Write the report atomically (an interrupted write leaves no half-written page)."""
    return atomic_write_text(path, circuit_report(circuit, tokenizer=tokenizer, title=title))


def report_tokenizer(circuit: Circuit):
    """The tokenizer of the circuit's model, for token strings in the report, or None when it is not
    available here (the report then shows token ids). Only the tokenizer is read, not the weights."""
    from transformers import AutoTokenizer

    from ..models import ModelNotAvailableError, resolve_spec

    try:
        return AutoTokenizer.from_pretrained(resolve_spec(circuit.model["spec"]))
    except (ModelNotAvailableError, ValueError, OSError):
        return None
