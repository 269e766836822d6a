"""The leaderboard as one self-contained HTML page: bars of edge ROC AUC, CPR, CMD and wall time per
method x model, each model's faithfulness and ROC curves (from the saved circuits), and the table."""

from __future__ import annotations

import html
from pathlib import Path

from .._io import atomic_write_text
from ..discovery import Circuit
from ..reports import figure_html, html_page
from ..viz import faithfulness_curves, leaderboard_bars, roc_curves

_COLUMNS = (("model", "model"), ("method", "method"), ("edge_roc_auc", "edge ROC AUC"),
            ("node_roc_auc", "node ROC AUC"), ("precision_at_size", "precision at planted size"),
            ("cpr", "CPR"), ("cmd", "CMD"), ("n_edges", "circuit edges"), ("faithfulness", "faithfulness"),
            ("seconds", "seconds"))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"<td data-value='{value!r}'>{value:.4g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in _COLUMNS)
    body = "".join("<tr>" + "".join(_cell(r.get(key)) for key, _ in _COLUMNS) + "</tr>" for r in rows)
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(out: Path, rows: list[dict], settings_text: str) -> Path:
    sections = [("Settings", f"<p>{html.escape(settings_text)} Click a column header to sort.</p>"),
                ("Methods × models", figure_html(leaderboard_bars(rows)))]
    for model in sorted({r["model"] for r in rows}):
        circuits = {r["method"]: Circuit.load(path) for r in rows if r["model"] == model
                    and (path := out / "circuits" / f"{model}__{r['method']}.json").exists()}
        with_roc = {k: c for k, c in circuits.items() if "edge_roc" in (c.ground_truth or {})}
        if circuits:
            curves = figure_html(faithfulness_curves(circuits, title=f"zoo:{model}: faithfulness curves"))
            rocs = figure_html(roc_curves(with_roc, title=f"zoo:{model}: edge ROC against the planted circuit"))
            sections.append((f"zoo:{model}", curves + (rocs if with_roc else "")))
    sections.append(("Table", _table(rows)))
    return atomic_write_text(out / "leaderboard.html", html_page("mechwork method leaderboard", sections))
