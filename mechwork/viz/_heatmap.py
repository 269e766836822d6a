"""Interactive patching heatmaps (plotly)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from ..hooks import PatchingResult

_AXIS_TITLES = {"layer": "layer", "head": "head", "pos": "position"}


def patching_heatmap(result: PatchingResult, *, title: str | None = None) -> go.Figure:
    """Heatmap of a 2-D patching result (layer x head, layer x pos; a 3-D result is summed over pos).

    Hover text shows the exact value; position axes show the prompt's tokens (escaped for HTML).
    """
    values, dims = result.values, result.dims
    if values.ndim == 3:
        values, dims = values.sum(1), (dims[0], dims[2])
    if values.ndim == 1:
        values, dims = values.unsqueeze(1), (dims[0], "all")
    if values.ndim != 2:
        raise ValueError(f"cannot draw a heatmap of a result with dims {result.dims}")
    rows, cols = dims
    x = _labels(result, cols, values.shape[1])
    y = [f"{_AXIS_TITLES.get(rows, rows)} {i}" for i in range(values.shape[0])]
    span = float(values.abs().nan_to_num().max()) or 1.0
    centre = 0.0 if result.normalization == "normalized" or result.direction == "noise" else None
    fig = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=x,
            y=y,
            colorscale="RdBu",
            zmid=centre if centre is not None else float(values.nan_to_num().mean()),
            zmin=None if centre is None else -span,
            zmax=None if centre is None else span,
            hovertemplate=f"{rows} %{{y}}<br>{cols} %{{x}}<br>{html.escape(result.metric)}: %{{z:.6g}}<extra></extra>",
        )
    )
    norm = "normalised: 0 = corrupted, 1 = clean" if result.normalization == "normalized" else "raw"
    fig.update_layout(
        title=html.escape(
            title or f"{result.method} patching of {result.site} ({result.direction}) — {result.metric}, {norm}"
        ),
        xaxis_title=_AXIS_TITLES.get(cols, cols),
        yaxis_title=_AXIS_TITLES.get(rows, rows),
        yaxis_autorange="reversed",
    )
    return fig


def _labels(result: PatchingResult, dim: str, size: int) -> list[str]:
    if dim == "pos" and result.position_labels:
        return [html.escape(label) for label in result.position_labels]
    return [f"{_AXIS_TITLES.get(dim, dim)} {i}" for i in range(size)]
