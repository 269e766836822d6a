"""The zoo registry: one entry per model with a planted mechanism, refused twice under one name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._types import GroundTruth, Task

# A builder writes a complete Hugging Face checkpoint (config, safetensors, tokenizer) into a folder
# and returns build facts to record (for trained models: accuracies, training time).
Builder = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    summary: str
    kind: Literal["constructed", "trained", "compiled"]  # compiled: a RASP program compiled by tracr
    builder: Builder = field(repr=False)
    task: Task = field(repr=False)
    # Circuits are known before building; labelling functions and triggers come from the recipe.
    ground_truth: Callable[[], GroundTruth] = field(repr=False)
    # Anything that changes the built weights goes here: it keys the on-disk cache.
    recipe: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    # Where the ground truth is only known once built (compiled entries), its kind, so listing needs no build.
    declared_ground_truth_kind: str | None = None

    @property
    def ground_truth_kind(self) -> str:
        return self.declared_ground_truth_kind or self.ground_truth().kind


class UnknownZooModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"a zoo model named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def get_entry(name: str) -> ZooEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownZooModelError(
            f"no zoo model named {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def entries() -> list[ZooEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
