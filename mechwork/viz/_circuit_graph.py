"""The circuit graph as an interactive, layered plotly drawing (no graphviz).

Columns are the residual stream's order: input, then per layer its heads and its MLP, then the logits.
Edges are drawn as lines whose width and colour follow the score; a head's q/k/v inputs are
distinguished by line dash and named in the hover text. Large graphs stay readable by filtering:
only the ``max_edges`` strongest edges above ``min_score`` are drawn, and the weaker ones are
collapsed into a count on each node's hover.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

import plotly.graph_objects as go

from .._nodes import parse_node

_DASH = {"q": "dot", "k": "dash", "v": "solid", None: "dashdot"}
_PORT_NAMES = {"q": "query", "k": "key", "v": "value", None: "residual"}
_N_BINS = 6


@dataclass(frozen=True)
class _Edge:
    src: str
    dst: str  # the destination node (port stripped)
    port: str | None
    score: float
    in_circuit: bool
    importance: float  # what orders and sizes the edge: |score|, or the score itself for signed rankings

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}" + (f".{self.port}" if self.port else "")


def _parse_edges(scores: Mapping[str, float], circuit: frozenset[str], signed: bool) -> list[_Edge]:
    """Edges with positions merged: ``SRC->DST@p`` counts as ``SRC->DST`` with its largest |score|."""
    merged: dict[str, tuple[float, bool]] = {}
    for name, score in scores.items():
        base = name.split("@")[0]
        keep = name in circuit or base in circuit
        old_score, old_keep = merged.get(base, (0.0, False))
        merged[base] = (score if abs(score) >= abs(old_score) else old_score, keep or old_keep)
    out = []
    for base, (score, keep) in merged.items():
        src, dst = base.split("->")
        ref = parse_node(dst)
        out.append(_Edge(src, ref.name, ref.port, score, keep, max(score, 0.0) if signed else abs(score)))
    return out


def node_positions(n_layers: int, n_heads: int, n_kv_heads: int | None = None) -> dict[str, tuple[float, float]]:
    """x: position in the residual stream (input, heads and MLP of each layer, logits); y: head index,
    with each MLP on a row of its own below the heads. Under grouped-query attention each key/value head
    sits just before its layer's heads, level with the middle of the query heads of its group."""
    middle = (n_heads - 1) / 2
    pos = {"input": (0.0, middle), "logits": (2.0 * n_layers + 1, middle)}
    grouped = n_kv_heads is not None and n_kv_heads != n_heads
    for layer in range(n_layers):
        for head in range(n_heads):
            pos[f"blocks.{layer}.attn.head.{head}"] = (2.0 * layer + 1, float(head))
        pos[f"blocks.{layer}.mlp"] = (2.0 * layer + 2, n_heads + 0.5)
        if grouped:
            per = n_heads // n_kv_heads
            for g in range(n_kv_heads):
                pos[f"blocks.{layer}.attn.kv_head.{g}"] = (2.0 * layer + 0.6, (g + 0.5) * per - 0.5)
    return pos


def _short(node: str) -> str:
    ref = parse_node(node)
    if ref.kind == "head":
        return f"a{ref.layer}.{ref.head}"
    if ref.kind == "kv_head":
        return f"kv{ref.layer}.{ref.head}"
    if ref.kind == "mlp":
        return f"m{ref.layer}"
    return node


def circuit_graph(
    source,
    n_layers: int | None = None,
    n_heads: int | None = None,
    *,
    circuit: frozenset[str] | set[str] | None = None,
    max_edges: int = 300,
    min_score: float = 0.0,
    only_circuit: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Draw scored edges on the model's layered node layout.

    ``source`` is a :class:`~mechwork.discovery.Circuit`, an :class:`~mechwork.discovery.EdgeScores`
    or a mapping ``{"SRC->DST": score}`` (then ``n_layers`` and ``n_heads`` are required).

    ``circuit`` edges are drawn fully opaque, others faint; ``only_circuit`` hides the rest. At most
    ``max_edges`` edges with ``|score| >= min_score`` are drawn (strongest first); each node's hover
    counts the weaker edges collapsed away.
    """
    scores, n_layers, n_heads, circuit, signed = _scored(source, n_layers, n_heads, circuit)
    n_kv_heads = _kv_heads(source, scores)
    edges = _parse_edges(scores, circuit, signed)
    if only_circuit:
        edges = [e for e in edges if e.in_circuit]
    ranked = sorted(edges, key=lambda e: (-e.importance, e.name))
    shown = [e for e in ranked if e.importance >= min_score and (e.importance > 0 or e.in_circuit)][:max_edges]
    hidden = len(ranked) - len(shown)
    pos = node_positions(n_layers, n_heads, n_kv_heads)
    span = max((e.importance for e in shown), default=1.0) or 1.0
    fig = go.Figure()
    for trace in _edge_traces(shown, pos, span):
        fig.add_trace(trace)
    for trace in _legend_entries(shown):
        fig.add_trace(trace)
    fig.add_trace(_hover_points(shown, pos))
    fig.add_trace(_node_trace(pos, shown, ranked, labels=n_layers * n_heads <= 64))
    fig.update_layout(
        title=html.escape(title or f"circuit graph — {len(shown)} of {len(ranked)} edges drawn"
                          + (f" ({hidden} weaker collapsed)" if hidden else "")),
        showlegend=True,
        legend={"title": "blue +, red −; width: |score|"},
        xaxis={"tickvals": [0] + [2 * i + 1.5 for i in range(n_layers)] + [2 * n_layers + 1],
               "ticktext": ["input"] + [f"layer {i}" for i in range(n_layers)] + ["logits"], "showgrid": False,
               "zeroline": False},
        yaxis={"tickvals": list(range(n_heads)) + [n_heads + 0.5],
               "ticktext": [f"head {h}" for h in range(n_heads)] + ["MLP"], "autorange": "reversed",
               "showgrid": False, "zeroline": False},
        plot_bgcolor="white",
        height=max(440, 42 * n_heads + 220),
        width=max(760, 120 * n_layers + 420),
    )
    return fig


def _scored(source, n_layers, n_heads, circuit) -> tuple[Mapping[str, float], int, int, frozenset[str], bool]:
    """Read a Circuit, EdgeScores or plain mapping into (scores, n_layers, n_heads, circuit edges, signed)."""
    if hasattr(source, "selected") and hasattr(source, "model"):  # Circuit
        chosen = source.selected if circuit is None else circuit
        signed = source.provenance.get("ranking") == "signed"
        return source.edges, source.model["n_layers"], source.model["n_heads"], frozenset(chosen), signed
    if hasattr(source, "by_edge"):  # EdgeScores
        chosen = circuit if circuit is not None else (source.circuit or ())
        return (source.by_edge(), source.graph.n_layers, source.graph.n_heads, frozenset(chosen),
                source.ranking == "signed")
    if n_layers is None or n_heads is None:
        raise ValueError("circuit_graph of a plain {edge: score} mapping needs n_layers and n_heads")
    return source, n_layers, n_heads, frozenset(circuit or ()), False


def _kv_heads(source, scores: Mapping[str, float]) -> int | None:
    """Key/value heads of a grouped-query model: recorded by a Circuit or the graph, else read off the
    edge names of a plain mapping."""
    if hasattr(source, "graph"):
        return source.graph.kv_heads
    if hasattr(source, "model") and isinstance(source.model, Mapping) and "n_kv_heads" in source.model:
        return int(source.model["n_kv_heads"])
    groups = [parse_node(name.split("@")[0].split("->")[1]) for name in scores if ".kv_head." in name]
    return 1 + max(ref.head for ref in groups) if groups else None


_PORT_LIFT = {"q": 0.0, "k": 0.2, "v": 0.4, None: 0.0}


def _curve(start: tuple[float, float], end: tuple[float, float], port: str | None = None,
           points: int = 13) -> tuple[list, list]:
    """An edge that skips columns arcs above them (a quadratic Bezier curve), so it is not mistaken for
    a path through the nodes it passes; a head's q, k and v edges from one source arc by different
    amounts, so none hides another."""
    (x0, y0), (x1, y1) = start, end
    lift = (min(2.5, 0.3 * (x1 - x0)) if x1 - x0 > 1.0 else 0.0) + _PORT_LIFT[port]
    if lift == 0.0:
        return [x0, (x0 + x1) / 2, x1], [y0, (y0 + y1) / 2, y1]
    # the y axis is reversed: subtracting draws the arc upwards
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - lift
    ts = [i / (points - 1) for i in range(points)]
    xs = [(1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1 for t in ts]
    ys = [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1 for t in ts]
    return xs, ys


def _colour(score: float, span: float) -> str:
    strength = min(1.0, abs(score) / span)
    shade = int(215 - 175 * strength)
    return f"rgb({shade},{shade},255)" if score >= 0 else f"rgb(255,{shade},{shade})"


def _edge_traces(edges: list[_Edge], pos: dict, span: float) -> list[go.Scatter]:
    """One trace per (strength bin, sign, port): plotly lines share one width and colour per trace."""
    groups: dict[tuple[int, bool, str | None, bool], list[_Edge]] = {}
    for e in edges:
        level = min(_N_BINS - 1, int(_N_BINS * e.importance / span))
        groups.setdefault((level, e.score >= 0, e.port, e.in_circuit), []).append(e)
    traces = []
    for (level, positive, port, kept), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1:]))):
        xs, ys = [], []
        for e in members:
            cx, cy = _curve(pos[e.src], pos[e.dst], e.port)
            xs += cx + [None]
            ys += cy + [None]
        value = (level + 1) / _N_BINS * span * (1 if positive else -1)  # the bin's upper edge
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", opacity=1.0 if kept else 0.35,
            line={"width": 1 + 1.5 * level, "color": _colour(value, span), "dash": _DASH[port]},
            name=_PORT_NAMES[port], legendgroup=_PORT_NAMES[port], showlegend=False,
        ))
    return traces


def _legend_entries(edges: list[_Edge]) -> list[go.Scatter]:
    """One legend entry per input kind drawn (clicking it hides that kind), and one for faint edges."""
    entries = []
    for port in ("q", "k", "v", None):
        if any(e.port == port for e in edges):
            entries.append(go.Scatter(x=[None], y=[None], mode="lines", name=f"{_PORT_NAMES[port]} input",
                                      line={"dash": _DASH[port], "color": "#555", "width": 3},
                                      legendgroup=_PORT_NAMES[port]))
    if any(not e.in_circuit for e in edges):
        entries.append(go.Scatter(x=[None], y=[None], mode="lines", name="faint: outside the circuit",
                                  line={"color": "#bbb", "width": 3}, hoverinfo="skip"))
    return entries


def _hover_points(edges: list[_Edge], pos: dict) -> go.Scatter:
    """Invisible markers at edge midpoints carry each edge's hover text (lines cannot hover per edge)."""
    xs, ys, text = [], [], []
    for e in edges:
        cx, cy = _curve(pos[e.src], pos[e.dst], e.port)
        xs.append(cx[len(cx) // 2])
        ys.append(cy[len(cy) // 2])
        text.append(f"{html.escape(e.name)}<br>{_PORT_NAMES[e.port]} input · score {e.score:.4g}"
                    + (" · in circuit" if e.in_circuit else ""))
    return go.Scatter(x=xs, y=ys, mode="markers", marker={"size": 8, "opacity": 0}, text=text,
                      hovertemplate="%{text}<extra></extra>", showlegend=False, name="edges")


def _node_trace(pos: dict, shown: list[_Edge], ranked: list[_Edge], labels: bool) -> go.Scatter:
    drawn = {n for e in shown for n in (e.src, e.dst)}
    collapsed: dict[str, int] = {}
    for e in ranked[len(shown):]:
        for n in (e.src, e.dst):
            collapsed[n] = collapsed.get(n, 0) + 1
    names = list(pos)
    return go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text" if labels else "markers",
        text=[_short(n) for n in names], textposition="top center",
        marker={"size": 14, "color": ["#1f4e79" if n in drawn else "#d0d0d0" for n in names],
                "line": {"width": 1, "color": "#333"}},
        customdata=[[n, collapsed.get(n, 0)] for n in names],
        hovertemplate="%{customdata[0]}<br>%{customdata[1]} weaker edges collapsed<extra></extra>",
        showlegend=False, name="nodes",
    )
