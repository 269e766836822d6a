"""Seeded, reproducible training of small GPT-2-architecture classifiers for the zoo.

The model reads a fixed-length token sequence and answers at the last position with one of a few
label tokens; the loss is cross-entropy over those label tokens' logits. Architecture and every
optimiser hyper-parameter are arguments, so published recipes can be rerun as they were.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from ._construct import gpt2_config


@dataclass(frozen=True)
class Architecture:
    """GPT-2 block shape; ``activation`` is a Hugging Face activation name (``relu``, ``gelu_new``)."""

    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 8
    activation: str = "relu"

    def hf_config(self, vocab_size: int) -> GPT2Config:
        return gpt2_config(vocab_size, self.n_ctx, self.d_model, self.n_layers, self.n_heads, self.d_mlp,
                           self.activation)


SCHEDULES = ("constant", "one_cycle")


@dataclass(frozen=True)
class TrainingRecipe:
    """AdamW training; ``batch_size=None`` means full-batch (one step per epoch). ``schedule``:
    ``"constant"`` learning rate, or ``"one_cycle"`` (warm up over the first tenth of the steps to ``lr``,
    then cosine down to about zero), which ends at a settled minimum instead of wherever a constant
    rate's oscillation happens to stop."""

    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int | None = None
    seed: int = 0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingResult:
    model: GPT2LMHeadModel
    train_accuracy: float
    test_accuracy: float
    seconds: float


def label_logits(model: GPT2LMHeadModel, inputs: Tensor, label_tokens: Tensor) -> Tensor:
    return model(inputs).logits[:, -1][:, label_tokens]


@torch.no_grad()
def accuracy(model: GPT2LMHeadModel, inputs: Tensor, labels: Tensor, label_tokens: Tensor) -> float:
    if len(inputs) == 0:
        return float("nan")
    preds = torch.cat([label_logits(model, chunk, label_tokens).argmax(-1) for chunk in inputs.split(4096)])
    return float((preds == labels).float().mean())


def train_classifier(
    inputs: Int[Tensor, "n pos"],
    labels: Int[Tensor, " n"],
    train_mask: Tensor,
    *,
    vocab_size: int,
    label_tokens: Int[Tensor, " n_labels"],
    arch: Architecture,
    recipe: TrainingRecipe,
) -> TrainingResult:
    """Train on ``inputs[train_mask]``; report accuracy on both splits. ``labels`` index ``label_tokens``."""
    if inputs.shape[1] > arch.n_ctx:
        raise ValueError(f"inputs have {inputs.shape[1]} positions but n_ctx is {arch.n_ctx}")
    torch.manual_seed(recipe.seed)
    model = GPT2LMHeadModel(arch.hf_config(vocab_size))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    x, y = inputs[train_mask], labels[train_mask]
    g = torch.Generator().manual_seed(recipe.seed)
    steps_per_epoch = -(-len(x) // (recipe.batch_size or len(x)))
    schedule = None
    if recipe.schedule == "one_cycle":
        total = recipe.epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.1)
    start = time.perf_counter()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=g)
        for idx in order.split(recipe.batch_size or len(x)):
            loss = torch.nn.functional.cross_entropy(label_logits(model, x[idx], label_tokens), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    model.eval()
    return TrainingResult(
        model=model,
        train_accuracy=accuracy(model, x, y, label_tokens),
        test_accuracy=accuracy(model, inputs[~train_mask], labels[~train_mask], label_tokens),
        seconds=time.perf_counter() - start,
    )
