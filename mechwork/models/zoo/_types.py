"""What a zoo entry carries besides its weights: its task and its ground truth, as data.

Node and edge names follow the computational-graph convention used everywhere in mechwork:
nodes are ``input``, ``blocks.{l}.attn.head.{h}``, ``blocks.{l}.mlp`` and ``logits``; an edge is
``"SRC->DST"`` where a head's destination names the input it feeds: ``blocks.{l}.attn.head.{h}.q``
(or ``.k`` / ``.v``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from ...metrics import Accuracy, LogitDiff

GroundTruthKind = Literal["circuit", "labelling-function", "trigger"]


@dataclass(frozen=True)
class TaskData:
    """Clean/corrupted prompt pairs with the answer the clean prompt should give.

    ``answers[i]`` is the clean answer token, ``wrong[i]`` the answer the corrupted prompt gives.
    Both are read at ``position`` (the same for every prompt: zoo prompts have a fixed length).
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answers: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]
    position: int = -1

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ")
        if not (len(self.answers) == len(self.wrong) == len(self.clean)):
            raise ValueError("answers, wrong and prompts must have the same batch size")

    def __len__(self) -> int:
        return len(self.clean)

    def logit_diff(self) -> LogitDiff:
        return LogitDiff(position=self.position, answers=self.answers, wrong=self.wrong)

    def accuracy(self) -> Accuracy:
        return Accuracy(position=self.position, answers=self.answers, wrong=self.wrong)


@dataclass(frozen=True)
class Task:
    """How to make prompt pairs for a zoo model, and what its metric measures."""

    name: str
    description: str
    make: Callable[[int, int], TaskData]  # (n, seed) -> TaskData
    metric: str = "logit_diff"

    def data(self, n: int = 32, seed: int = 0) -> TaskData:
        if n <= 0:
            raise ValueError(f"need at least one prompt, got n={n}")
        return self.make(n, seed)


@dataclass(frozen=True)
class CircuitGroundTruth:
    """The planted circuit: the nodes and edges whose ablation to the corrupted input breaks the task.

    ``structural_edges`` are planted too but carry only what clean and corrupted prompts share
    (positions), so no corrupted-input ablation can see them; they are kept out of scoring.
    """

    nodes: frozenset[str]
    edges: frozenset[str]
    structural_edges: frozenset[str] = frozenset()
    notes: str = ""
    kind: GroundTruthKind = field(default="circuit", init=False)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "nodes": sorted(self.nodes),
            "edges": sorted(self.edges),
            "structural_edges": sorted(self.structural_edges),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class LabellingGroundTruth:
    """A hidden labelling function over a grid of inputs, kept as its full label table."""

    table: Int[Tensor, "a b"]
    description: str
    kind: GroundTruthKind = field(default="labelling-function", init=False)

    def label(self, a: int, b: int) -> int:
        return int(self.table[a, b])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "table": self.table.tolist()}


@dataclass(frozen=True)
class TriggerGroundTruth:
    """A planted backdoor: the trigger token sequence and what it does to the output."""

    trigger: tuple[str, ...]
    behaviour: str
    kind: GroundTruthKind = field(default="trigger", init=False)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "trigger": list(self.trigger), "behaviour": self.behaviour}


GroundTruth = CircuitGroundTruth | LabellingGroundTruth | TriggerGroundTruth


def distinct_tokens(g: torch.Generator, n: int, low: int, high: int, k: int) -> Tensor:
    """``[n, k]`` rows of k distinct token ids drawn from ``[low, high)``."""
    return torch.stack([torch.randperm(high - low, generator=g)[:k] + low for _ in range(n)])
