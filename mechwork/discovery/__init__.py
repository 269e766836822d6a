"""Layer 3b: circuit-discovery methods on the computational graph, and how their circuits are scored."""

from . import acdc, eap, eap_ig, exact, learned_mask, node_patching  # noqa: F401  (registers the methods)
from ._circuit import SCHEMA, VERSION, Circuit, CircuitFileError
from ._pipeline import CircuitRequest, find_circuit, smallest_faithful
from ._registry import Method, UnknownMethodError, discover, get_method, methods, register_method
from ._scoring import PERCENTAGES, CircuitEvaluator, FaithfulnessCurve, faithfulness_curve, ground_truth_scores, roc_auc
from ._select import greedy, select, threshold, top_n
from ._types import ABLATIONS, METRICS, DiscoveryTask, EdgeScores, make_metric, task_from_data
from ._verify import Check, Verification, verify

__all__ = [
    "PERCENTAGES",
    "SCHEMA",
    "VERSION",
    "Circuit",
    "CircuitEvaluator",
    "Check",
    "CircuitFileError",
    "CircuitRequest",
    "FaithfulnessCurve",
    "Verification",
    "faithfulness_curve",
    "find_circuit",
    "greedy",
    "ground_truth_scores",
    "roc_auc",
    "select",
    "smallest_faithful",
    "threshold",
    "top_n",
    "verify",
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
