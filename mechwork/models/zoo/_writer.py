"""Writing a model and tokenizer as a safetensors Hugging Face checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast


def save_checkpoint(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def constructed_builder(
    build: Callable[[], tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]],
) -> Callable[[Path], dict[str, Any]]:
    def builder(folder: Path) -> dict[str, Any]:
        model, tokenizer = build()
        save_checkpoint(model, tokenizer, folder)
        return {"weights": "set by hand (not trained)"}

    return builder
