"""Layer 3b: circuit-discovery methods on the computational graph, and how their circuits are scored."""

from . import eap, eap_ig, exact  # noqa: F401  (registers the methods)
from ._registry import Method, UnknownMethodError, discover, get_method, methods, register_method
from ._types import ABLATIONS, METRICS, DiscoveryTask, EdgeScores, make_metric, task_from_data

__all__ = [
    "ABLATIONS",
    "METRICS",
    "DiscoveryTask",
    "EdgeScores",
    "Method",
    "UnknownMethodError",
    "discover",
    "get_method",
    "make_metric",
    "methods",
    "register_method",
    "task_from_data",
]
