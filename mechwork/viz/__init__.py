"""Layer 4: interactive plotly figures."""

from ._heatmap import patching_heatmap

__all__ = ["patching_heatmap"]
