"""Checking an explanation before submitting it, in the spirit of causal scrubbing: resample-ablate
everything the claim says does not matter, and see how much of the behaviour survives.

- :func:`resample_circuit`: a claimed circuit. Every edge outside it carries its source's output on
  another prompt of the same distribution (a random derangement of the batch); edges in it stay clean.
- :func:`resample_variable`: a claimed intermediate variable. The activation at a hook is replaced by
  its value on another prompt with the *same* value of the variable; if the claim is right the
  behaviour survives, while the control (a prompt chosen regardless of the variable) destroys it.

``surviving`` = (claim - control) / (full - control): 1 means the claim explains all the behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from ..discovery import make_metric
from ..graph import Graph, masked_forward, node_outputs
from ..hooks import cache_activations, hooked, resolve_hook
from ..hooks._runner import embed
from ..metrics import as_scalar, metric_name


@dataclass(frozen=True)
class HypothesisResult:
    claim: str
    metric: str
    full: float  # metric of the untouched model
    claimed: float  # metric with the claim's resampling
    control: float  # metric with everything resampled (circuit) / resampled ignoring the variable
    accuracy_full: float
    accuracy_claimed: float
    accuracy_control: float
    n_resamples: int

    @property
    def surviving(self) -> float:
        span = self.full - self.control
        return (self.claimed - self.control) / span if abs(span) > 1e-12 else float("nan")

    def summary(self) -> str:
        return (f"{self.claim}: {100 * self.surviving:.1f}% of the {self.metric} survives (full {self.full:.3f}, "
                f"claim {self.claimed:.3f}, control {self.control:.3f}); accuracy {self.accuracy_full:.3f} -> "
                f"{self.accuracy_claimed:.3f} (control {self.accuracy_control:.3f}), {self.n_resamples} resamples")

    def _repr_html_(self) -> str:
        from html import escape

        return f"<p>{escape(self.summary())}</p>"


def _derangement(n: int, g: torch.Generator) -> Tensor:
    """A random permutation with no fixed point (a random cyclic shift of a random order)."""
    order = torch.randperm(n, generator=g)
    perm = torch.empty_like(order)
    perm[order] = order.roll(1)
    return perm


def _metrics(model, data, key: str):
    return make_metric(key, model, data), make_metric("accuracy", model, data)


def _score(metric, logits: Tensor) -> float:
    return as_scalar(metric.score(logits), metric_name(metric))


@torch.no_grad()
def resample_circuit(model, data, edges: Sequence[str], *, metric: str = "logit_diff", n_resamples: int = 5,
                     seed: int = 0, graph: Graph | None = None) -> HypothesisResult:
    """How much of the behaviour on ``data.clean`` survives when every edge outside ``edges`` is
    resample-ablated. ``data`` has ``clean``, ``answers``, ``wrong`` and ``position`` (zoo TaskData)."""
    if len(data.clean) < 2:
        raise ValueError("resampling needs at least two prompts")
    graph = graph or Graph.from_model(model)
    keep = graph.mask_of(edges)  # unknown edge names fail here, with near matches
    task_metric, accuracy = _metrics(model, data, metric)
    resid = embed(model, data.clean)
    g = torch.Generator().manual_seed(seed)
    totals = torch.zeros(4)
    for _ in range(n_resamples):
        ablated = node_outputs(model, graph, data.clean[_derangement(len(data.clean), g)])
        claimed = masked_forward(model, graph, resid, keep, ablated, position=data.position)
        control = masked_forward(model, graph, resid, graph.full_mask(0.0), ablated, position=data.position)
        totals += torch.tensor([_score(task_metric, claimed), _score(task_metric, control),
                                _score(accuracy, claimed), _score(accuracy, control)])
    totals /= n_resamples
    full = model(data.clean)[:, data.position]
    return HypothesisResult(f"circuit of {len(keep.nonzero())} edges", metric_name(task_metric),
                            _score(task_metric, full), float(totals[0]), float(totals[1]), _score(accuracy, full),
                            float(totals[2]), float(totals[3]), n_resamples)


def _same_value_partner(values: Tensor, g: torch.Generator) -> Tensor:
    """For each row, another row with the same value (itself only when its value is unique)."""
    partner = torch.arange(len(values))
    for value in values.unique():
        rows = (values == value).nonzero().flatten()
        if len(rows) > 1:
            partner[rows] = rows[_derangement(len(rows), g)]
    return partner


@torch.no_grad()
def resample_variable(model, data, hook: str, variable: Int[Tensor, " batch"] | Sequence[int], *,
                      position: int | None = None, metric: str = "logit_diff", n_resamples: int = 5,
                      seed: int = 0) -> HypothesisResult:
    """Claim: the activation at ``hook`` (at ``position``, or everywhere) matters only through
    ``variable`` (one value per prompt of ``data.clean``). Patch it from prompts with the same value
    of the variable (claim) or from random prompts (control) and compare the behaviour."""
    resolve_hook(model, hook)
    variable = torch.as_tensor(variable)
    if variable.shape != (len(data.clean),):
        raise ValueError(f"variable needs one value per prompt ({len(data.clean)}), got shape {tuple(variable.shape)}")
    task_metric, accuracy = _metrics(model, data, metric)
    _, cache = cache_activations(model, data.clean, [hook])
    source = cache[hook]
    g = torch.Generator().manual_seed(seed)

    def run(partner: Tensor) -> tuple[float, float]:
        def patch(activation, hook=None):
            out = activation.clone()
            if position is None:
                out[:] = source[partner]
            else:
                out[:, position] = source[partner][:, position]
            return out

        with hooked(model, [(hook, patch)]):
            logits = model(data.clean)[:, data.position]
        return _score(task_metric, logits), _score(accuracy, logits)

    totals = torch.zeros(4)
    for _ in range(n_resamples):
        totals += torch.tensor([*run(_same_value_partner(variable, g)), *run(_derangement(len(variable), g))])
    totals /= n_resamples
    full = model(data.clean)[:, data.position]
    where = hook if position is None else f"{hook}[:, {position}]"
    return HypothesisResult(f"{where} depends only on the claimed variable", metric_name(task_metric),
                            _score(task_metric, full), float(totals[0]), float(totals[2]),
                            _score(accuracy, full), float(totals[1]), float(totals[3]), n_resamples)
