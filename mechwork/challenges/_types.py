"""What a challenge is: a model, a public description, and a hidden answer.

The answer is one or more of the zoo's ground-truth kinds — a labelling program
(:class:`LabellingGroundTruth`), a circuit (:class:`CircuitGroundTruth`), a trigger
(:class:`TriggerGroundTruth`) — and is only ever read by scoring, never by export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from ..models.zoo import CircuitGroundTruth, GroundTruth, LabellingGroundTruth, TaskData, TriggerGroundTruth

ASKS = ("program", "circuit", "trigger")
_KIND_OF = {"program": LabellingGroundTruth, "circuit": CircuitGroundTruth, "trigger": TriggerGroundTruth}


class ChallengeError(ValueError):
    """An unknown challenge, or a challenge definition that cannot be used."""


class SubmissionError(ValueError):
    """A submission that cannot be scored: malformed file, wrong shape, code that raised or timed out."""


@dataclass(frozen=True)
class Challenge:
    """A hidden-mechanism challenge.

    ``description`` is everything a participant may read: the input space, the task and what is
    asked. ``public_task`` makes the prompts a participant may use (circuit challenges: clean and
    corrupted prompts); it is ``None`` where prompts would give the answer away (their labels or
    their triggers). ``answer`` returns the hidden answer and is called only by scoring.
    """

    name: str
    title: str
    description: str
    asks: tuple[str, ...]
    model_dir: Callable[[], Path] = field(repr=False)
    answer: Callable[[], tuple[GroundTruth, ...]] = field(repr=False)
    public_task: Callable[[int, int], TaskData] | None = field(default=None, repr=False)
    input_space: str | None = None  # "pairs" for program challenges, "trojan" for trigger challenges

    def __post_init__(self) -> None:
        unknown = [a for a in self.asks if a not in ASKS]
        if unknown or not self.asks:
            raise ChallengeError(f"challenge {self.name!r}: asks must be some of {ASKS}, got {self.asks}")

    def hidden(self, ask: str):
        """The hidden answer for one kind of question (scoring only)."""
        for truth in self.answer():
            if isinstance(truth, _KIND_OF[ask]):
                return truth
        raise ChallengeError(f"challenge {self.name!r} does not ask for a {ask}")


@dataclass(frozen=True)
class Score:
    """A scored submission: what was asked, the numbers, and a readable summary."""

    challenge: str
    kind: str
    numbers: dict
    summary: str

    def to_dict(self) -> dict:
        return {"challenge": self.challenge, "kind": self.kind, "numbers": self.numbers, "summary": self.summary}

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>"
                       "</tr>" for k, v in self.numbers.items())
        return f"<p>{escape(self.summary)}</p><table>{rows}</table>"


@torch.no_grad()
def predict_labels(model, prompts: Int[Tensor, "n pos"], label_tokens: Int[Tensor, " k"],
                   batch: int = 4096) -> Int[Tensor, " n"]:
    """The model's label for each prompt: the argmax over the label tokens at the last position."""
    device = next(model.parameters()).device
    labels = label_tokens.to(device)
    return torch.cat([model(chunk.to(device))[:, -1, labels].argmax(-1).cpu() for chunk in prompts.split(batch)])
