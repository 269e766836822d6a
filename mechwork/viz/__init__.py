"""Layer 4: interactive plotly figures. Every function returns a ``plotly.graph_objects.Figure``."""

from ._attention import attention_patterns, token_labels
from ._circuit_graph import circuit_graph, node_positions
from ._curves import LEADERBOARD_METRICS, faithfulness_curves, leaderboard_bars, roc_curves
from ._export import STATIC_FORMATS, StaticExportUnavailable, find_browser, save_figure
from ._heatmap import patching_heatmap

__all__ = [
    "LEADERBOARD_METRICS",
    "STATIC_FORMATS",
    "StaticExportUnavailable",
    "attention_patterns",
    "circuit_graph",
    "faithfulness_curves",
    "find_browser",
    "leaderboard_bars",
    "node_positions",
    "patching_heatmap",
    "roc_curves",
    "save_figure",
    "token_labels",
]
