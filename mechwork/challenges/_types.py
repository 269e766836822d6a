"""What a challenge is: a model, a public description, questions of registered kinds, and a hidden answer.

A :class:`ChallengeKind` says what one kind of question's input space looks like (parsed from the pack's
JSON), how to read its hidden answer and a submission, and how to score one; the registry of kinds is in
``_kinds``. The answer is only ever read by scoring, never by export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ..models.zoo import TaskData


class ChallengeError(ValueError):
    """An unknown challenge, or a challenge definition that cannot be used."""


class SubmissionError(ValueError):
    """A submission that cannot be scored: malformed file, wrong shape, code that raised or timed out."""


@dataclass(frozen=True)
class ChallengeKind:
    """One kind of question a challenge can ask. Every kind has the same functions:

    - ``parse_space(space: dict, where: str) -> Space``: the question's input space from the pack's
      JSON, as a frozen value (or None where the kind takes none); bad data raises
      :class:`ChallengeError` naming ``where``.
    - ``parse_answer(answer: dict, where: str) -> Truth``: the hidden answer from ``answer.json``.
    - ``claims(path: Path) -> bool``: whether a submission file has this kind's form.
    - ``read(path: Path, space, *, timeout: float) -> Submission``: a submission file, checked
      (:class:`SubmissionError` naming the file); ``timeout`` bounds submitted code, and ``trust=True``
      (passed only when the caller gives it) lets submitted code run unisolated where no sandbox works.
    - ``score(challenge: Challenge, submission, **options) -> Score``: the submission against
      ``challenge.hidden(name)``, reading the input space from ``challenge.space(name)``.

    ``submit`` says how to submit, for participants (it goes into the blind export's README); ``starter``,
    where given, is a code cell for the blind export's starter notebook (after the one that loads ``model``).
    """

    name: str
    summary: str
    submit: str
    parse_space: Callable[[dict, str], Any] = field(repr=False)
    parse_answer: Callable[[dict, str], Any] = field(repr=False)
    claims: Callable[[Path], bool] = field(repr=False)
    read: Callable[..., Any] = field(repr=False)
    score: Callable[..., Score] = field(repr=False)
    starter: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str) or any(c.isspace() for c in self.name):
            raise ChallengeError(f"a challenge kind needs a non-empty name without spaces, got {self.name!r}")


@dataclass(frozen=True)
class Question:
    """One question of a challenge: a registered kind's name, its parsed input space, and the JSON it
    was parsed from (public: it goes into the blind export, so it must never hold the answer)."""

    kind: str
    space: Any = None
    spec: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Challenge:
    """A hidden-mechanism challenge.

    ``description`` is everything a participant may read: the input space, the task and what is
    asked. ``questions`` name the kinds asked for, each with its input space. ``public_task`` makes
    the prompts a participant may use (circuit challenges: clean and corrupted prompts); it is
    ``None`` where prompts would give the answer away (their labels or their triggers). ``answer``
    returns the hidden answer of each question (kind name -> truth) and is called only by scoring.
    """

    name: str
    title: str
    description: str
    questions: tuple[Question, ...]
    model_dir: Callable[[], Path] = field(repr=False)
    answer: Callable[[], dict[str, Any]] = field(repr=False)
    public_task: Callable[[int, int], TaskData] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.questions:
            raise ChallengeError(f"challenge {self.name!r}: it asks nothing (no questions)")
        kinds = [q.kind for q in self.questions]
        if len(set(kinds)) != len(kinds):
            raise ChallengeError(f"challenge {self.name!r}: a kind may be asked once, got {kinds}")

    @property
    def asks(self) -> tuple[str, ...]:
        """The kinds of question asked, by name."""
        return tuple(q.kind for q in self.questions)

    def _question(self, kind: str) -> Question:
        for q in self.questions:
            if q.kind == kind:
                return q
        raise ChallengeError(f"challenge {self.name!r} does not ask for a {kind} (it asks for: "
                             f"{', '.join(self.asks)})")

    def space(self, kind: str):
        """The parsed input space of the question of this kind."""
        return self._question(kind).space

    def hidden(self, kind: str):
        """The hidden answer to the question of this kind (scoring only)."""
        self._question(kind)
        answers = self.answer()
        if kind not in answers:
            raise ChallengeError(f"challenge {self.name!r}: its hidden answer has no {kind!r} entry")
        return answers[kind]


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
