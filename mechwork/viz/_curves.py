"""Faithfulness curves, ROC curves against planted ground truth, and the method leaderboard."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _curve_dict(source) -> dict:
    """A faithfulness curve as a dict, from a Circuit, a FaithfulnessCurve or a dict."""
    if hasattr(source, "faithfulness") and isinstance(source.faithfulness, dict):  # Circuit
        return source.faithfulness["curve"]
    if hasattr(source, "to_dict"):  # FaithfulnessCurve
        return source.to_dict()
    return dict(source)


def faithfulness_curves(curves: Mapping[str, object], *, title: str = "faithfulness curve") -> go.Figure:
    """Faithfulness against the percentage of edges kept (log axis), one line per method.

    Values are Circuits, FaithfulnessCurves or their dicts; the legend gives each line's CPR and CMD.
    """
    fig = go.Figure()
    for name, source in curves.items():
        c = _curve_dict(source)
        percent = [100 * f for f in c["fractions"]]
        label = html.escape(f"{name} (CPR {c['cpr']:.3f}, CMD {c['cmd']:.3f})")
        fig.add_trace(go.Scatter(
            x=percent, y=c["faithfulness"], mode="lines+markers", name=label,
            customdata=c["n_edges"],
            hovertemplate=f"{html.escape(name)}<br>%{{x:.3g}}% of edges (%{{customdata}})<br>"
                          "faithfulness %{y:.4f}<extra></extra>",
        ))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", annotation_text="full model")
    fig.update_layout(title=html.escape(title), xaxis_title="edges kept (%)", yaxis_title="normalised faithfulness",
                      xaxis_type="log", legend_title="method")
    return fig


def roc_curves(curves: Mapping[str, object], *, title: str = "edge ROC against the planted circuit") -> go.Figure:
    """ROC curves, one per method. Values are Circuits with ground truth, or ``{"fpr", "tpr"}`` dicts."""
    fig = go.Figure()
    for name, source in curves.items():
        gt = getattr(source, "ground_truth", None)
        roc = gt["edge_roc"] if gt else source
        auc = gt.get("edge_roc_auc") if gt else None
        label = html.escape(name + (f" (AUC {auc:.3f})" if auc is not None else ""))
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=label, line_shape="linear",
                                 hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title=html.escape(title), xaxis_title="false-positive rate", yaxis_title="true-positive rate",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02])
    return fig


LEADERBOARD_METRICS = (
    ("edge_roc_auc", "edge ROC AUC (higher is better)"),
    ("cpr", "CPR (higher is better)"),
    ("cmd", "CMD (lower is better)"),
    ("seconds", "wall time, s (lower is better)"),
)


def leaderboard_bars(rows: Sequence[Mapping], *, metrics=LEADERBOARD_METRICS,
                     title: str = "method leaderboard") -> go.Figure:
    """Grouped bars, one panel per metric: x = method, one bar per model. ``rows`` are leaderboard rows
    (``model``, ``method`` and the metric keys)."""
    models = sorted({r["model"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[html.escape(t) for _, t in metrics])
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
    for col, (key, _) in enumerate(metrics, start=1):
        for i, model in enumerate(models):
            by_method = {r["method"]: r.get(key) for r in rows if r["model"] == model}
            fig.add_trace(go.Bar(
                x=[html.escape(m) for m in methods], y=[_number(by_method.get(m)) for m in methods],
                name=html.escape(model), legendgroup=model, showlegend=col == 1,
                marker_color=palette[i % len(palette)],
                hovertemplate=f"{html.escape(model)} · %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
    fig.update_layout(title=html.escape(title), barmode="group", legend_title="zoo model",
                      height=420, width=max(900, 320 * len(metrics)))
    return fig


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
