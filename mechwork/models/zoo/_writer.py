"""Writing a model and tokenizer as a safetensors Hugging Face checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerFast


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def constructed_builder(
    build: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerFast]],
) -> Callable[[Path], dict[str, Any]]:
    def builder(folder: Path) -> dict[str, Any]:
        model, tokenizer = build()
        save_checkpoint(model, tokenizer, folder)
        return {"weights": "set by hand (not trained)"}

    # the cache key hashes the builder's module: make that the module that sets the weights
    builder.__module__ = build.__module__
    return builder
