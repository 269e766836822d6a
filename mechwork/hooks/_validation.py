"""Input checks shared by caching and patching: clear errors before any forward pass."""

from __future__ import annotations

import torch
from torch import Tensor


class InputError(ValueError):
    """Inputs a caching or patching call cannot use (shapes, dtypes, empty batches)."""


def check_tokens(model, tokens: Tensor, what: str = "tokens") -> Tensor:
    if not isinstance(tokens, Tensor):
        raise InputError(f"{what} must be a tensor of token ids [batch, pos], got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise InputError(f"{what} must be [batch, pos] token ids, got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {tuple(tokens.shape)})")
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    vocab = int(model.cfg.d_vocab)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise InputError(f"{what} has ids outside the vocabulary [0, {vocab})")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and tokens.shape[1] > int(n_ctx):
        raise InputError(f"{what} has {tokens.shape[1]} positions; the model's context is {n_ctx}")
    return tokens.long()


def check_pair(model, clean: Tensor, corrupted: Tensor) -> tuple[Tensor, Tensor]:
    clean = check_tokens(model, clean, "clean tokens")
    corrupted = check_tokens(model, corrupted, "corrupted tokens")
    if clean.shape != corrupted.shape:
        raise InputError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} must have the "
            "same shape: patching swaps activations position by position"
        )
    return clean, corrupted
