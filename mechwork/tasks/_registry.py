"""One registry of standard tasks, one signature: ``generate(tokenizer, n_prompts, seed) -> PromptSet``.

A duplicate name is refused; an unknown one gets the nearest registered names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from ._docstring import docstring
from ._greater_than import greater_than
from ._ioi import ioi
from ._sva import sva
from ._types import PromptSet, TaskError

Generator = Callable[..., PromptSet]  # (tokenizer or model, n_prompts, seed) -> PromptSet


@dataclass(frozen=True)
class StandardTask:
    """A named generator of clean/corrupted prompt pairs and the metric its paper reads (``metric``)."""

    name: str
    summary: str
    generate: Generator
    metric: str = "logit_diff"


class UnknownTaskError(TaskError, KeyError):
    """No standard task of that name (the message suggests the nearest)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_REGISTRY: dict[str, StandardTask] = {}


def register_task(task: StandardTask) -> StandardTask:
    """Add a standard task; a name already taken is refused."""
    if task.name in _REGISTRY:
        raise TaskError(f"a standard task named {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> StandardTask:
    try:
        return _REGISTRY[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        raise UnknownTaskError(f"unknown standard task {name!r}; {hint}known tasks: {', '.join(sorted(_REGISTRY))}"
                               ) from None


def tasks() -> list[StandardTask]:
    """Every registered standard task, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def generate(name: str, tokenizer_or_model, n_prompts: int = 32, seed: int = 0) -> PromptSet:
    """The named task's prompt pairs for this tokenizer (or model)."""
    return get_task(name).generate(tokenizer_or_model, n_prompts, seed)


register_task(StandardTask("ioi", "indirect object identification (Wang et al.): IO vs S, ABC corruption", ioi))
register_task(StandardTask("greater-than", "greater-than (Hanna et al.): years > YY vs <= YY, start year 01",
                           greater_than, "greater_than_prob_diff"))
register_task(StandardTask("docstring", "docstring (Heimersheim & Janiak): the next parameter name", docstring))
register_task(StandardTask("sva", "subject-verb agreement: the verb form agreeing with the subject", sva))
