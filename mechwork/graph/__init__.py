"""Layer 3a: the computational graph (nodes, edges) and the patch-mask engine that runs circuits on it."""

from ._engine import (
    CleanStart,
    ablation_values,
    clean_start,
    masked_forward,
    masked_forward_from,
    node_outputs,
    run_circuit,
    source_deltas,
)
from ._graph import PORTS, Graph, GraphError, MaskViews

__all__ = [
    "PORTS",
    "CleanStart",
    "clean_start",
    "masked_forward_from",
    "Graph",
    "GraphError",
    "MaskViews",
    "ablation_values",
    "masked_forward",
    "node_outputs",
    "run_circuit",
    "source_deltas",
]
