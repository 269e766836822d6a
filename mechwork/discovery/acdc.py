"""ACDC — automatic circuit discovery (Conmy et al. 2023), on the patch-mask engine.

Destinations are visited from the logits backwards (reverse topological order). For each incoming
edge of a destination still connected to the logits, the edge is ablated tentatively; if the
circuit's loss rises by less than ``threshold`` it stays ablated, otherwise it is restored. A node
whose every outgoing edge was removed is disconnected: its inputs are dropped without testing.

Loss: ``"kl"`` — KL(full model || circuit) at the answer position (ACDC's default); ``"metric"`` —
``|M(circuit) - M(full model)|`` for the task metric. An edge's score is the loss increase measured
when it was tested (kept edges score >= threshold); edges never tested score below every tested one.

With ``checkpoint`` set, progress is saved (atomically) after every destination; rerunning with the
same settings resumes where the interrupted run stopped.

Speed (the same decisions and scores as one trial at a time): on GPT-2 each trial runs from its
destination's layer on the model's layer pieces (``_acdc_fast.py``), and several trials of one destination
run as one batch, each assuming that the edges tested before it in the batch are decided like the last
edge tested (removed, or kept). Where a decision differs, the trials after it are dropped and rerun; the
batch doubles after a guess that held and halves after one that did not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._batching import weighted_sum
from .._io import atomic_write_json
from .._nodes import parse_node
from ..graph import Graph, clean_start, masked_forward, masked_forward_from
from ..hooks._runner import embed
from ..hooks._validation import InputError
from ..metrics import KLDivergence, as_scalar, metric_name, metric_value
from ..models import warn_slow_path
from ._acdc_fast import PieceTrials
from ._batches import PerBatch, micro_batches
from ._exact_fast import fast_exact_for, why_no_layer_pieces
from ._layer_pieces import LayerPieces
from ._registry import register_method
from ._types import DiscoveryTask, EdgeScores

CHECKPOINT_VERSION = 1
TRIAL_ROWS = 512  # prompts x trials run in one batched call (exact patching's default max_rows)


def _destinations(graph: Graph) -> list[tuple[int, list[int]]]:
    """(destination node index, its incoming flat edge indices, latest source first), logits first, then
    layer by layer downwards (a layer's MLP before its heads and key/value heads)."""
    incoming: dict[int, list[int]] = {}
    for i, (_src, dst) in enumerate(graph.edge_endpoints):
        incoming.setdefault(dst, []).append(i)

    def downstream_first(d: int) -> tuple[int, int, int]:
        if d == graph.logits_index:
            return (graph.n_layers, 0, d)
        ref = parse_node(graph.nodes[d])
        return (ref.layer, int(ref.kind == "mlp"), d)

    order = sorted(incoming, key=downstream_first, reverse=True)
    return [(d, sorted(incoming[d], key=lambda i: -graph.edge_endpoints[i][0])) for d in order]


class _Trial:
    """One micro-batch's runs of circuits: its embeddings, ablation values and (``from_layer``) clean run;
    with ``pieces``, trials are computed from the model's layer pieces (checked first when ``check``)."""

    def __init__(self, model, graph: Graph, task: DiscoveryTask, from_layer: bool, pieces: LayerPieces | None = None,
                 check: bool = True):
        self.model, self.graph, self.task = model, graph, task
        self.fast: PieceTrials | None = None
        with torch.no_grad():
            self.resid = embed(model, task.clean)
            self.ablated = task.ablated(model, graph)
            self.clean = clean_start(model, graph, self.resid) if from_layer else None
            if self.clean is not None and pieces is not None:
                fast = fast_exact_for(model, self.clean.resid_pre, task.position, task.metric, check=check,
                                      pieces=pieces, user="ACDC")
                self.fast = None if fast is None else PieceTrials(fast, graph, self.clean.outputs, self.ablated)

    @torch.no_grad()
    def logits(self, mask: torch.Tensor, layer: int = 0) -> torch.Tensor:
        if self.clean is not None and layer > 0:
            return masked_forward_from(self.model, self.graph, self.clean, min(layer, self.graph.n_layers - 1),
                                       mask, self.ablated, position=self.task.position)
        return masked_forward(self.model, self.graph, self.resid, mask, self.ablated, position=self.task.position)

    def value(self, mask: torch.Tensor, layer: int = 0) -> float:
        """The task's metric (KL against the full model, or the task metric) with ``mask``: a mean over prompts."""
        return as_scalar(metric_value(self.task.metric, self.logits(mask, layer)), metric_name(self.task.metric))

    def values(self, masks: torch.Tensor, layer: int = 0) -> list[float]:
        """:meth:`value` of each row of ``masks`` (``[trials, edges]``), batched on the layer pieces."""
        if self.fast is None:
            return [self.value(mask, layer) for mask in masks]
        logits = self.fast.logits(masks, layer)
        metric = self.task.metric if self.fast.fast.metric is None else self.fast.fast.metric  # the columns read
        return [as_scalar(metric_value(metric, trial), metric_name(metric)) for trial in logits]


def _layer_pieces(model, graph: Graph) -> LayerPieces | None:
    """The model's layer pieces for ACDC's trials, or ``None`` (saying why) where they do not apply."""
    why = why_no_layer_pieces(model)
    if why is None and graph.positions is not None:
        why = "they do not compute position-resolved graphs yet"
    if why is not None:
        warn_slow_path(model, "ACDC's layer pieces", f"{why}; each trial runs the blocks from its destination's "
                       "layer through the patch-mask engine, one trial at a time (exact, slower)")
        return None
    return LayerPieces(model)


class _Loss:
    """The loss of a circuit over every prompt; ``layer`` (when every edge below it is still kept) starts the
    runs there. ``"kl"``: the mean KL against the full model (each prompt's own full-model logits, computed
    once); ``"metric"``: ``|M(circuit) - M(full)|`` of the means over all prompts (never per micro-batch).
    Called with one mask, the loss; with ``[trials, edges]`` masks, the list of their losses."""

    def __init__(self, model, graph: Graph, task: DiscoveryTask, objective: str, from_layer: bool = True):
        if objective not in ("kl", "metric"):
            raise InputError(f"acdc objective must be 'kl' or 'metric', got {objective!r}")
        self.objective = objective
        full_mask = graph.full_mask(1.0)
        first = micro_batches(model, graph, task)
        full = [(b.rows, _Trial(model, graph, b.task, from_layer=False).logits(full_mask).float()) for b in first]
        if objective == "kl":
            reference = torch.cat([logits for _, logits in full])
            task = dataclasses.replace(task, metric=KLDivergence(position=task.position, reference=reference))
        else:
            name = metric_name(task.metric)
            self.full_value = weighted_sum((rows.weight, as_scalar(metric_value(b.task.metric, logits), name))
                                           for b, (rows, logits) in zip(first, full, strict=True))
        self.pieces = _layer_pieces(model, graph) if from_layer else None
        self.width = max(1, TRIAL_ROWS // max(b.rows.size for b in first)) if self.pieces is not None else 1
        self._checked = False

        def build(batch_task: DiscoveryTask) -> _Trial:
            trial = _Trial(model, graph, batch_task, from_layer, self.pieces, check=not self._checked)
            self._checked = True
            if self.pieces is not None and trial.fast is None:  # the check failed (and said so): the engine
                self.pieces, self.width = None, 1
            return trial

        self.trials = PerBatch(micro_batches(model, graph, task), build)

    def __call__(self, masks: torch.Tensor, layer: int = 0) -> float | list[float]:
        single = masks.ndim == 1
        values = self.trials.total(lambda trial: trial.values(masks[None] if single else masks, layer))
        if self.objective == "metric":
            values = [abs(value - self.full_value) for value in values]
        return values[0] if single else values


@dataclass
class _Speculation:
    """How many trials of one destination run as one batch, and what each assumes of the edges tested
    before it in the batch: removed (or kept) like the last edge tested."""

    most: int
    width: int = 1
    removed: bool = True

    def after(self, held: bool, last_removed: bool) -> None:
        self.removed = last_removed
        self.width = min(self.most, 2 * self.width) if held else max(1, self.width // 2)


def _guess_held(removed: bool, guess: _Speculation) -> bool:
    """Whether an edge was decided as the later trials of its batch assumed."""
    return removed == guess.removed


def _test_edges(loss: _Loss, mask: torch.Tensor, scores: torch.Tensor, edges: list[int], layer: int, current: float,
                threshold: float, guess: _Speculation) -> float:
    """Test ``edges`` (all into one destination) in order, exactly as one trial at a time would: remove each
    for good when the loss rises by less than ``threshold``. Updates ``mask`` and ``scores``; returns the loss."""
    done = 0
    while done < len(edges):
        block = edges[done : done + guess.width]
        masks = mask.unsqueeze(0).repeat(len(block), 1)
        for j, i in enumerate(block):
            masks[j, i] = 0.0
            masks[j + 1 :, i] = 0.0 if guess.removed else 1.0
        values = loss(masks, layer)
        for j, i in enumerate(block):
            scores[i] = values[j] - current
            removed = values[j] - current < threshold
            mask[i] = 0.0 if removed else 1.0
            current = values[j] if removed else current
            done += 1
            if not _guess_held(removed, guess):  # the trials after this one assumed the other decision
                break
        guess.after(held=j == len(block) - 1, last_removed=removed)  # held: no trial of the block was dropped
    return current


def _fingerprint(graph: Graph, task: DiscoveryTask, threshold: float, objective: str) -> str:
    h = hashlib.sha256()
    grouping = [graph.kv_heads] if graph.grouped else []  # MHA fingerprints unchanged
    h.update(json.dumps([graph.n_layers, graph.n_heads, graph.positions, threshold, objective,
                         task.ablation, task.metric_key, *grouping]).encode())
    h.update(task.clean.cpu().numpy().tobytes())
    h.update(task.corrupted.cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a readable ACDC checkpoint ({e}); delete it to start over") from None
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
        raise InputError(f"{path} is a checkpoint of a different ACDC run; delete it or choose another path")
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_json(path, state, indent=None)


@register_method("acdc", "ACDC: prune edges from the logits backwards while the loss stays within a threshold",
                 threshold=0.01, objective="kl", checkpoint=None, progress=False, from_layer=True)
def acdc(model, graph: Graph, task: DiscoveryTask, threshold: float = 0.01, objective: str = "kl",
         checkpoint: str | os.PathLike | None = None, progress: bool = False, from_layer: bool = True) -> EdgeScores:
    """``from_layer``: run each trial from the clean residual entering the destination's layer (nothing
    below it has been pruned yet, so that residual is the clean one); off, every trial runs the whole
    model. Both give the same circuit."""
    loss = _Loss(model, graph, task, objective, from_layer)
    mask = graph.full_mask(1.0)
    scores = torch.full((graph.n_edges,), float("nan"))
    destinations = _destinations(graph)
    done, path = 0, Path(checkpoint) if checkpoint else None
    fingerprint = _fingerprint(graph, task, threshold, objective)
    if path is not None and (state := _load_checkpoint(path, fingerprint)):
        mask, scores, done = torch.tensor(state["mask"]), torch.tensor(state["scores"]), state["done"]
    current = loss(mask)
    sources = graph.endpoint_tensor[:, 0]
    guess = _Speculation(loss.width)
    for step, (dst, edges) in enumerate(tqdm(destinations, disable=not progress, desc="acdc")):
        if step < done:
            continue
        # a destination is alive while an output it feeds still reaches the logits
        alive = dst == graph.logits_index or any(bool(mask[sources == s].any()) for s in graph.readers(dst))
        if alive:
            current = _test_edges(loss, mask, scores, edges, int(graph.destination_layers[edges[0]]), current,
                                  threshold, guess)
        else:
            mask[edges] = 0.0
        if path is not None:
            _save_checkpoint(path, {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "done": step + 1,
                                    "mask": mask.tolist(), "scores": scores.tolist()})
    tested = scores[~scores.isnan()]
    floor = float(tested.min()) - 1.0 if len(tested) else -1.0
    scores = torch.where(scores.isnan(), torch.full_like(scores, floor), scores)
    kept = frozenset(graph.edges[i] for i in torch.nonzero(mask).flatten().tolist())
    return EdgeScores(graph, scores, "acdc", ranking="signed", circuit=kept)
