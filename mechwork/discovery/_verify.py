"""``verify``: re-derive everything a circuit file (and its report) states, from the file alone.

A reader reloads the model by reference, checks its weight hash, rebuilds the task from the prompts
in the file, reruns the method with the recorded options, and compares line by line: every edge
score, the circuit chosen from them, its faithfulness (with the full and empty values), the
faithfulness curve with CPR and CMD, and the ground-truth numbers (edge and node ROC AUC,
precision and recall at the planted size). Each line says what was recorded, what was recomputed,
the tolerance and whether they agree. ``rederive=False`` checks the faithfulness lines only (no
rerun of the method: for files whose method is too slow to rerun, or not registered here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..graph import Graph
from ..models import weights_hash
from ._circuit import Circuit
from ._pipeline import CircuitRequest, choose_edges
from ._registry import Method, UnknownMethodError, discover, get_method
from ._scoring import CircuitEvaluator, faithfulness_curve, ground_truth_scores
from ._types import DiscoveryTask, EdgeScores, make_metric

# Options that change how a method runs, never what it computes: not passed again on a rerun.
_RUN_ONLY_OPTIONS = ("checkpoint", "progress")
# Rank statistics (ROC AUC, precision/recall at size) are compared to this: a score that moved within
# the score tolerance may swap two near-tied edges.
RANK_TOLERANCE = 1e-3
_TRUTH_LINES = (("edge_roc_auc", "edge ROC AUC"), ("node_roc_auc", "node ROC AUC"),
                ("precision_at_size", "precision at planted size"), ("recall_at_size", "recall at planted size"))


@dataclass(frozen=True)
class Check:
    """One line of a verification: a stated value, the value recomputed from the file, and whether they agree."""

    what: str
    recorded: object
    recomputed: object
    tolerance: float | None  # None: must be equal
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        tol = "" if self.tolerance is None else f" (tolerance {self.tolerance:.0e})"
        detail = f"; {self.detail}" if self.detail else ""
        return f"{mark} {self.what}: recorded {_show(self.recorded)}, recomputed {_show(self.recomputed)}{tol}{detail}"


@dataclass(frozen=True)
class Verification:
    checks: tuple[Check, ...]
    weights_match: bool
    tolerance: float
    rederived: bool  # were the method's scores recomputed (else only the faithfulness lines)

    @property
    def ok(self) -> bool:
        return self.weights_match and all(c.ok for c in self.checks)

    @property
    def disagreements(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def _faithfulness(self) -> Check:
        return next(c for c in self.checks if c.what == "faithfulness")

    @property
    def recorded(self) -> float:
        return float(self._faithfulness().recorded)

    @property
    def recomputed(self) -> float:
        return float(self._faithfulness().recomputed)

    def message(self) -> str:
        if not self.weights_match:
            return "the model's weights differ from those the circuit was found on (weight hash mismatch)"
        verdict = "reproduces" if self.ok else "does NOT reproduce"
        scope = "every stated number re-derived" if self.rederived else "faithfulness only (scores not rerun)"
        bad = self.disagreements
        head = f"circuit {verdict} ({scope}; {len(self.checks) - len(bad)}/{len(self.checks)} lines agree)"
        return "\n".join([head, *(c.line() for c in (bad or self.checks))])


@dataclass(frozen=True)
class _Prompts:
    clean: torch.Tensor
    corrupted: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor
    position: int


def verify(circuit: Circuit, model=None, *, tolerance: float = 1e-4, score_tolerance: float = 1e-4,
           rederive: bool = True) -> Verification:
    """Re-derive what ``circuit`` states. ``tolerance``: for faithfulness values; ``score_tolerance``: for
    edge scores, relative to the largest recorded score magnitude (at least 1)."""
    if model is None:
        from ..models import load

        model = load(circuit.model["spec"])
    if weights_hash(model) != circuit.model["weights_sha256"]:
        return Verification((), False, tolerance, rederive)
    p = circuit.task["prompts"]
    data = _Prompts(*(torch.tensor(p[k]) for k in ("clean", "corrupted", "answers", "wrong")),
                    position=circuit.task["position"])
    graph = Graph.from_model(model, positions=circuit.task.get("positions"))
    metric = circuit.task["metric"]
    batch_size = circuit.provenance.get("batch_size")  # found by micro-batches: re-derived the same way
    task = DiscoveryTask(data.clean, data.corrupted, make_metric(metric, model, data, batch_size=batch_size), metric,
                         circuit.task["ablation"], batch_size)
    evaluator = CircuitEvaluator(model, graph, task)
    checks = _faithfulness_checks(circuit, evaluator, tolerance)
    if rederive:
        try:
            method = get_method(circuit.method)
        except UnknownMethodError:
            checks.append(Check("edge scores", f"method {circuit.method!r}", "not registered here", None, False,
                                "register the method, or verify with rederive=False (--faithfulness-only)"))
        else:
            scores = _rerun(model, graph, task, circuit, method)
            checks += _score_checks(circuit, scores, score_tolerance)
            checks += _selection_check(circuit, evaluator, scores)
            checks += _curve_checks(circuit, evaluator, scores, tolerance)
            checks += _truth_checks(circuit, scores)
    return Verification(tuple(checks), True, tolerance, rederive)


def _faithfulness_checks(circuit: Circuit, evaluator: CircuitEvaluator, tolerance: float) -> list[Check]:
    f = circuit.faithfulness
    value = evaluator.faithfulness(frozenset(circuit.selected))
    return [_close("faithfulness", f["value"], value, tolerance),
            _close("metric with every edge kept", f.get("full_value"), evaluator.full, tolerance),
            _close("metric with every edge ablated", f.get("empty_value"), evaluator.empty, tolerance)]


def _rerun(model, graph: Graph, task: DiscoveryTask, circuit: Circuit, method: Method) -> EdgeScores:
    options = {k: v for k, v in circuit.options.items() if k in method.options and k not in _RUN_ONLY_OPTIONS}
    return discover(model, graph, task, circuit.method, **options)


def _score_checks(circuit: Circuit, scores: EdgeScores, score_tolerance: float) -> list[Check]:
    recomputed = scores.by_edge()
    recorded = circuit.edges
    missing = sorted(set(recorded) ^ set(recomputed))
    if missing:
        return [Check("edge scores", f"{len(recorded)} edges", f"{len(recomputed)} edges", None, False,
                      f"edges in one but not the other, e.g. {', '.join(missing[:3])}")]
    scale = max(1.0, max((abs(v) for v in recorded.values() if math.isfinite(v)), default=1.0))
    limit = score_tolerance * scale
    differences = {e: abs(recorded[e] - recomputed[e]) for e in recorded}
    bad = sorted((e for e, d in differences.items() if not d <= limit), key=lambda e: -differences[e])
    worst = max(differences.values(), default=0.0)
    detail = (f"max difference {worst:.2e} over {len(recorded)} edges" if not bad else
              f"{len(bad)} edges differ, worst: " + ", ".join(
                  f"{e} {recorded[e]:.6g} vs {recomputed[e]:.6g}" for e in bad[:5]))
    return [Check("edge scores", f"{len(recorded)} scores", f"{len(recomputed)} scores", limit, not bad, detail)]


def _selection_check(circuit: Circuit, evaluator: CircuitEvaluator, scores: EdgeScores) -> list[Check]:
    """The circuit the recorded selection picks from the recomputed scores."""
    sel = circuit.selection
    if sel.get("how") not in ("auto", "top-n", "threshold", "greedy"):
        return [Check("circuit edges", sel.get("how"), "unknown selection", None, False)]
    request = CircuitRequest(sel["how"], sel.get("value"), sel.get("target", 0.9))
    selected = set(choose_edges(evaluator, scores, request))
    extra, lost = sorted(selected - set(circuit.selected)), sorted(set(circuit.selected) - selected)
    detail = f"only recomputed: {extra[:3]}; only recorded: {lost[:3]}" if extra or lost else ""
    return [Check("circuit edges", f"{len(circuit.selected)} edges", f"{len(selected)} edges", None,
                  not extra and not lost, detail)]


def _curve_checks(circuit: Circuit, evaluator: CircuitEvaluator, scores: EdgeScores, tolerance: float) -> list[Check]:
    stated = circuit.faithfulness.get("curve")
    if not stated:
        return []
    curve = faithfulness_curve(evaluator, scores, tuple(100 * f for f in stated["fractions"])).to_dict()
    pairs = list(zip(stated["faithfulness"], curve["faithfulness"], strict=True))
    worst = max((abs(a - b) for a, b in pairs if not (_nan(a) and _nan(b))), default=0.0)
    return [Check("faithfulness curve", f"{len(pairs)} points", f"{len(curve['faithfulness'])} points", tolerance,
                  all(_agree(a, b, tolerance) for a, b in pairs), f"max difference {worst:.2e}"),
            _close("CPR", stated.get("cpr"), curve["cpr"], tolerance),
            _close("CMD", stated.get("cmd"), curve["cmd"], tolerance)]


def _truth_checks(circuit: Circuit, scores: EdgeScores) -> list[Check]:
    stated = circuit.ground_truth
    if not stated:
        return []
    truth, where = _truth_of(circuit)
    checks = []
    if truth is None:
        return [Check("ground truth", "stated", "unknown", None, False, where)]
    if sorted(stated.get("edges", [])) != sorted(truth.edges):
        checks.append(Check("ground-truth edges", f"{len(stated.get('edges', []))} edges", f"{len(truth.edges)} edges",
                            None, False, f"the file's planted circuit is not {where}'s"))
    again = ground_truth_scores(scores, truth)
    for key, label in _TRUTH_LINES:
        if key in stated:
            checks.append(_close(label, stated[key], again[key], RANK_TOLERANCE))
    return checks


def _truth_of(circuit: Circuit):
    """The planted circuit the file was scored against: the zoo entry's own where the model is a zoo
    model (so a file cannot restate its own truth), else the one written in the file."""
    from ..models.zoo import CircuitGroundTruth, get_entry

    spec, stated = circuit.model["spec"], circuit.ground_truth
    if spec.startswith("zoo:"):
        truth = get_entry(spec[4:]).ground_truth()
        if isinstance(truth, CircuitGroundTruth):
            return truth, spec
    if "nodes" in stated:
        return CircuitGroundTruth(frozenset(stated["nodes"]), frozenset(stated["edges"]),
                                  frozenset(stated.get("structural_edges", ()))), "the file"
    return None, "the file names no planted nodes and the model is not a zoo model with a planted circuit"


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _agree(recorded, recomputed, tolerance: float) -> bool:
    if recorded is None or recomputed is None:
        return recorded is recomputed
    if _nan(recorded) or _nan(recomputed):
        return _nan(recorded) and _nan(recomputed)
    return abs(float(recorded) - float(recomputed)) <= tolerance


def _close(what: str, recorded, recomputed, tolerance: float) -> Check:
    ok = _agree(recorded, recomputed, tolerance)
    detail = ""
    if recorded is not None and recomputed is not None and not (_nan(recorded) or _nan(recomputed)):
        detail = f"difference {abs(float(recorded) - float(recomputed)):.2e}"
    return Check(what, recorded, recomputed, tolerance, ok, detail)


def _show(value) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)
