"""``pairs``: a 1-layer transformer trained to label ``[a, b, =]`` with a hidden labelling function.

In the style of the EIS "challenge for mechanists" transformer: a, b in 0..112, a binary label, trained
on half of all 113^2 pairs. The labelling function is the ground truth. :func:`train_pairs_model` takes
any labelling function or 113x113 label table, the architecture and every training hyper-parameter,
so users can pose their own challenges and the reference recipe can be rerun as published
(:data:`REFERENCE_ARCH`, :data:`REFERENCE_RECIPE`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._tokenizer import word_level_tokenizer
from ._registry import ZooEntry
from ._training import Architecture, TrainingRecipe, TrainingResult, train_classifier
from ._types import LabellingGroundTruth, Task, TaskData
from ._writer import save_checkpoint

P = 113
VOCAB = ["<bos>", *[str(i) for i in range(P)], "=", "L0", "L1"]
NUMBER_OFFSET = 1
EQUALS = P + 1
LABEL_TOKENS = torch.tensor([P + 2, P + 3])  # "L0", "L1"

#: The recipe of the published challenge (about 97% test accuracy; slow on a CPU).
REFERENCE_ARCH = Architecture(d_model=128, n_layers=1, n_heads=8, d_mlp=1024, n_ctx=3, activation="relu")
REFERENCE_RECIPE = TrainingRecipe(epochs=5000, lr=5e-4, weight_decay=1.0)
#: The zoo's default: same shape of model, smaller and faster (about a minute on 2 cores). One-cycle
#: schedule: at a constant 3e-3 the held-out accuracy oscillates (0.83-0.96 between epochs 100 and
#: 600) and where it stops moved with the torch/transformers build (0.958, later 0.877); annealed it
#: settles (0.973 held-out at 600 epochs, rising every 100 epochs from 0.951 at 100).
DEFAULT_ARCH = Architecture(d_model=64, n_layers=1, n_heads=4, d_mlp=256, n_ctx=3, activation="relu")
DEFAULT_RECIPE = TrainingRecipe(epochs=600, lr=3e-3, weight_decay=1.0, schedule="one_cycle")

Labelling = Callable[[int, int], int] | Tensor | np.ndarray


def hidden_label(a: int, b: int) -> int:
    """The zoo's hidden labelling function (the answer to the ``pairs`` challenge)."""
    return int((a + b >= P) != (a % 2 == 1))


HIDDEN_DESCRIPTION = "label = (a + b >= 113) XOR (a is odd)"


def label_table(labelling: Labelling) -> Tensor:
    """A ``[113, 113]`` 0/1 long tensor from a labelling function or table; clear errors otherwise."""
    if callable(labelling):
        table = torch.tensor([[labelling(a, b) for b in range(P)] for a in range(P)])
    else:
        table = torch.as_tensor(np.asarray(labelling))
        if tuple(table.shape) != (P, P):
            raise ValueError(f"a label table must be {P}x{P}, got shape {tuple(table.shape)}")
    if table.dtype == torch.bool:
        table = table.long()
    if table.is_floating_point() and not torch.equal(table, table.round()):
        raise ValueError("labels must be 0 or 1")
    table = table.long()
    bad = ~((table == 0) | (table == 1))
    if bad.any():
        a, b = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"labels must be 0 or 1; label({a}, {b}) = {int(table[a, b])}")
    return table


def all_pairs() -> Tensor:
    """``[113^2, 3]`` token ids of every prompt ``[a, b, =]``, row ``a * 113 + b``."""
    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    return torch.stack([a + NUMBER_OFFSET, b + NUMBER_OFFSET, torch.full_like(a, EQUALS)], dim=1)


def train_split(seed: int = 0, fraction: float = 0.5) -> Tensor:
    mask = torch.zeros(P * P, dtype=torch.bool)
    order = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed))
    mask[order[: int(fraction * P * P)]] = True
    return mask


def train_pairs_model(
    labelling: Labelling = hidden_label,
    *,
    arch: Architecture = DEFAULT_ARCH,
    recipe: TrainingRecipe = DEFAULT_RECIPE,
    train_fraction: float = 0.5,
    split_seed: int = 0,
) -> TrainingResult:
    """Train a pairs model on ``train_fraction`` of all pairs labelled by ``labelling``."""
    table = label_table(labelling)
    return train_classifier(
        all_pairs(),
        table.flatten(),
        train_split(split_seed, train_fraction),
        vocab_size=len(VOCAB),
        label_tokens=LABEL_TOKENS,
        arch=arch,
        recipe=recipe,
    )


def _build(folder: Path) -> dict[str, Any]:
    result = train_pairs_model()
    save_checkpoint(result.model, word_level_tokenizer(VOCAB, "<bos>"), folder)
    return {
        "train_accuracy": round(result.train_accuracy, 4),
        "test_accuracy": round(result.test_accuracy, 4),
        "train_seconds": round(result.seconds, 1),
    }


def make_task_data(n: int, seed: int) -> TaskData:
    """Clean pairs and corrupted pairs with the same ``a`` and a ``b`` whose label differs."""
    table = label_table(hidden_label)
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, P, (n,), generator=g)
    b = torch.randint(0, P, (n,), generator=g)
    b_corrupt = torch.empty_like(b)
    for i in range(n):
        flips = (table[a[i]] != table[a[i], b[i]]).nonzero().flatten()
        b_corrupt[i] = flips[torch.randint(0, len(flips), (1,), generator=g)]
    def prompts(bs: Tensor) -> Tensor:
        return torch.stack([a + NUMBER_OFFSET, bs + NUMBER_OFFSET, torch.full_like(a, EQUALS)], dim=1)

    return TaskData(
        clean=prompts(b),
        corrupted=prompts(b_corrupt),
        answers=LABEL_TOKENS[table[a, b]],
        wrong=LABEL_TOKENS[table[a, b_corrupt]],
        position=-1,
    )


TASK = Task(
    name="pairs",
    description=(
        "Binary labels for '[a, b, =]' (a, b in 0..112) from a hidden labelling function; answer tokens "
        "L0/L1. Corrupted prompts keep a and change b to flip the label."
    ),
    make=make_task_data,
)

ENTRY = ZooEntry(
    name="pairs",
    summary="1-layer transformer labelling [a, b, =] by a hidden function (EIS challenge style)",
    kind="trained",
    builder=_build,
    task=TASK,
    ground_truth=lambda: LabellingGroundTruth(table=label_table(hidden_label), description=HIDDEN_DESCRIPTION),
    recipe={"arch": DEFAULT_ARCH, "recipe": DEFAULT_RECIPE, "labels": HIDDEN_DESCRIPTION, "split_seed": 0},
)
