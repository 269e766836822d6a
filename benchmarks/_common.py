"""Shared benchmark helpers: a GPT-2-small-shaped random model booted through the bridge, and timing."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import mechwork  # noqa: E402
from mechwork.models._tokenizer import word_level_tokenizer  # noqa: E402

BENCH_DIR = Path(os.environ.get("MECHWORK_BENCH_DIR", "bench_out"))


def gpt2_small_random(seed: int = 0):
    """GPT2Config() (12 layers x 12 heads, d_model 768) with random weights, saved and booted locally."""
    folder = BENCH_DIR / "gpt2-small-random"
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        word_level_tokenizer([f"t{i}" for i in range(50257)], "t0").save_pretrained(folder)
    return mechwork.load(folder, device="cuda" if torch.cuda.is_available() else "cpu")


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_line() -> str:
    if torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()}"
    return f"device: CPU, {torch.get_num_threads()} threads"


def bench_arguments(description: str):
    """The arguments every benchmark shares (batch, sequence length, repeats); scripts add their own."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def random_prompt_pair(model, batch: int, seq: int):
    """Seeded random clean/corrupted prompts on the model's device and a logit-difference metric at the
    last position (clean first token vs corrupted first token)."""
    from mechwork.metrics import LogitDiff

    torch.manual_seed(0)
    device = next(model.parameters()).device
    vocab = model.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch, seq), device=device)
    corrupted = torch.randint(0, vocab, (batch, seq), device=device)
    return clean, corrupted, LogitDiff(position=-1, answers=clean[:, 0], wrong=corrupted[:, 0])
