"""Interactive patching heatmaps (plotly): layer x head, layer x position, head x position."""

from __future__ import annotations

import html
from collections.abc import Mapping

import plotly.graph_objects as go
from torch import Tensor

from ..hooks import PatchingResult

_AXIS_TITLES = {"layer": "layer", "head": "head", "pos": "position"}


def _view(result: PatchingResult, rows: str | None, cols: str | None,
          select: Mapping[str, int]) -> tuple[Tensor, str, str, str]:
    """Reduce the result to a (rows, cols) table: fixed dims are indexed, the rest summed over.

    Returns the values, the two dims and a note on what was done to the others (for the title).
    """
    values, dims, notes = result.values, list(result.dims), []
    for dim, index in select.items():
        if dim not in dims:
            raise ValueError(f"select: the result has no dim {dim!r} (dims: {result.dims})")
        values = values.select(dims.index(dim), index)
        dims.remove(dim)
        notes.append(f"{dim} {index}")
    if rows is None and cols is None:
        rows, cols = (dims + ["all"])[:2] if len(dims) < 3 else (dims[0], dims[-1])
    elif rows is None or cols is None:
        raise ValueError("give both rows= and cols=, or neither")
    for dim in (rows, cols):
        if dim not in dims and dim != "all":
            raise ValueError(f"the result has no dim {dim!r} left to draw (dims: {tuple(dims)}, selected: {select})")
    for dim in [d for d in dims if d not in (rows, cols)]:
        values = values.sum(dims.index(dim))
        dims.remove(dim)
        notes.append(f"summed over {dim}")
    if cols == "all":
        values, dims = values.unsqueeze(1), dims + ["all"]
    if dims != [rows, cols]:
        values = values.T
    return values, rows, cols, ", ".join(notes)


def patching_heatmap(result: PatchingResult, *, rows: str | None = None, cols: str | None = None,
                     select: Mapping[str, int] | None = None, title: str | None = None) -> go.Figure:
    """Heatmap of a patching result with ``rows`` x ``cols`` among its dims (``layer``, ``head``, ``pos``).

    A 3-D result (layer, pos, head) defaults to layer x head summed over positions; ``select={"layer": 1}``
    with ``rows="head", cols="pos"`` draws one layer's head x position table. Hover text shows the
    exact value; position axes show the prompt's tokens (escaped for HTML).
    """
    values, rows, cols, note = _view(result, rows, cols, dict(select or {}))
    x = _labels(result, cols, values.shape[1])
    y = _labels(result, rows, values.shape[0])
    span = float(values.abs().nan_to_num().max()) or 1.0
    centre = 0.0 if result.normalization == "normalized" or result.direction == "noise" else None
    metric = html.escape(result.metric)
    fig = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=x,
            y=y,
            colorscale="RdBu",
            zmid=centre if centre is not None else float(values.nan_to_num().mean()),
            zmin=None if centre is None else -span,
            zmax=None if centre is None else span,
            hovertemplate=f"{rows} %{{y}}<br>{cols} %{{x}}<br>{metric}: %{{z:.6g}}<extra></extra>",
            colorbar={"title": metric},
        )
    )
    norm = "normalised: 0 = corrupted, 1 = clean" if result.normalization == "normalized" else "raw"
    default = f"{result.method} patching of {result.site} ({result.direction}) — {result.metric}, {norm}"
    fig.update_layout(
        title=html.escape((title or default) + (f" [{note}]" if note else "")),
        xaxis_title=_AXIS_TITLES.get(cols, cols),
        yaxis_title=_AXIS_TITLES.get(rows, rows),
        yaxis_autorange="reversed",
    )
    return fig


def _labels(result: PatchingResult, dim: str, size: int) -> list[str]:
    if dim == "pos" and result.position_labels:
        return [html.escape(label) for label in result.position_labels]
    return [f"{_AXIS_TITLES.get(dim, dim)} {i}" for i in range(size)]
