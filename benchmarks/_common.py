"""Shared benchmark helpers: random GPT-2-shaped models booted through the bridge, repeated timings, and the
target report (each line states its target and ``met`` / ``MISSED``; ``--check`` exits 1 on a miss)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import mechwork  # noqa: E402
from mechwork.models._tokenizer import word_level_tokenizer  # noqa: E402

BENCH_DIR = Path(os.environ.get("MECHWORK_BENCH_DIR", "bench_out"))
GPT2_VOCAB = 50257


# ---- models -------------------------------------------------------------------------------------
def random_gpt2(name: str, seed: int = 0, **config):
    """A GPT-2 with random weights (``GPT2Config(**config)``), saved once under ``bench_out/`` and booted
    through ``mechwork.load`` like any local checkpoint."""
    folder = BENCH_DIR / name
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        cfg = GPT2Config(**config)
        GPT2LMHeadModel(cfg).save_pretrained(folder)
        word_level_tokenizer([f"t{i}" for i in range(cfg.vocab_size)], "t0").save_pretrained(folder)
    return mechwork.load(folder, device="cuda" if torch.cuda.is_available() else "cpu")


def random_llama(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **config):
    """A Llama with random weights (``LlamaConfig(**config)``, vocabulary 32,000 unless given), saved once
    under ``bench_out/`` (in ``dtype``) and booted through ``mechwork.load`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = BENCH_DIR / name
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        cfg = LlamaConfig(**{"vocab_size": 32000, **config})
        LlamaForCausalLM(cfg).to(dtype).save_pretrained(folder)
        word_level_tokenizer([f"t{i}" for i in range(cfg.vocab_size)], "t0").save_pretrained(folder)
    return mechwork.load(folder, device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)


def llama_random(name: str = "llama-8x512-gqa-random", seed: int = 0):
    """A Llama-shaped model with random weights: 8 layers, d_model 512, 8 query / 2 key-value heads
    (grouped-query attention), RMSNorm, gated MLP (d_mlp 1376), rotary positions, vocabulary 32,000."""
    return random_llama(name, seed, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=2, intermediate_size=1376, max_position_embeddings=256)


def gpt2_small_random(seed: int = 0):
    """``GPT2Config()`` (12 layers x 12 heads, d_model 768, vocab 50257) with random weights."""
    return random_gpt2("gpt2-small-random", seed)


def describe(model) -> str:
    c = model.cfg
    return f"{c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}, vocab {c.d_vocab}"


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


# ---- timing -------------------------------------------------------------------------------------
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clock(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one quantity: their median and range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``"3.12 (2.90-3.40, n=5)"``, values multiplied by ``scale``."""
        lo, hi = min(self.values) * scale, max(self.values) * scale
        text = f"{self.median * scale:.{digits}f}{unit}"
        if len(self.values) > 1:
            text += f" ({lo:.{digits}f}-{hi:.{digits}f}, n={len(self.values)})"
        return text


def timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Spread:
    for _ in range(warmup):
        fn()
    return Spread(tuple(clock(fn) for _ in range(repeats)))


def paired_ratio(fn: Callable[[], object], baseline: Callable[[], object], repeats: int,
                 warmup: int = 1) -> tuple[Spread, Spread, Spread]:
    """(fn seconds, baseline seconds, fn / baseline per back-to-back pair): each ratio compares two runs
    made moments apart, so a change in the machine's load moves both."""
    for _ in range(warmup):
        baseline()
        fn()
    pairs = [(clock(fn), clock(baseline)) for _ in range(repeats)]
    return (Spread(tuple(a for a, _ in pairs)), Spread(tuple(b for _, b in pairs)),
            Spread(tuple(a / b for a, b in pairs)))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


# ---- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """``value <op> bound``, e.g. ``Target("<=", 4, " forwards")``; ``Target("in", 0.8, hi=1.25)`` for a range."""

    op: str
    bound: float
    unit: str = ""
    hi: float | None = None

    def met(self, value: float) -> bool:
        if self.op == "in":
            return self.bound <= value <= self.hi
        return {"<=": value <= self.bound, "<": value < self.bound,
                ">=": value >= self.bound, ">": value > self.bound}[self.op]

    def __str__(self) -> str:
        if self.op == "in":
            return f"in [{self.bound:g}, {self.hi:g}]{self.unit}"
        return f"{self.op} {self.bound:g}{self.unit}"


@dataclass
class Report:
    """Benchmark lines; a line with a target ends in ``met`` or ``MISSED``."""

    title: str
    lines: list[tuple[str, bool | None]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def header(self, *parts: str) -> None:
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"== {self.title} | {now} | {device_line()} | {os.cpu_count()} cores visible | load average "
              f"(1, 5, 15 min) {load} | torch {torch.__version__}, python {platform.python_version()}")
        print(f"   machine speed now: {matmul_speed()} (figures in minutes scale with it; ratios mostly do not)")
        for part in parts:
            print(f"   {part}")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        print(f"   {text}")
        sys.stdout.flush()

    def result(self, what: str, value: float, shown: str, target: Target | None = None, how: str = "measured",
               detail: str = "") -> bool | None:
        """One line: ``what [how]: shown | detail | target T: met``. ``value`` is compared with the target."""
        ok = None if target is None else target.met(value)
        text = f"{what} [{how}]: {shown}"
        if detail:
            text += f" | {detail}"
        if target is not None:
            text += f" | target {target}: {'met' if ok else 'MISSED'}"
        print(f"{text}  [at {minutes(time.perf_counter() - self.started)}, load {os.getloadavg()[0]:.1f}]")
        sys.stdout.flush()
        self.lines.append((text, ok))
        return ok

    def finish(self, check: bool) -> int:
        missed = [text for text, ok in self.lines if ok is False]
        met = sum(1 for _, ok in self.lines if ok)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        took = minutes(time.perf_counter() - self.started)
        print(f"== {self.title}: {met} targets met, {len(missed)} MISSED | {took} in all | load average now {load} "
              f"| machine speed now {matmul_speed()}")
        for text in missed:
            print(f"   MISSED: {text.split(' [')[0]}")
        return 1 if check and missed else 0


def matmul_speed() -> str:
    """Float32 matmul throughput here and now (a GPT-2 MLP-sized product, median of 5): shared machines
    vary by a third between hours, which moves every absolute timing."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(8192, 768, device=device), torch.randn(768, 3072, device=device)
    seconds = []
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return f"{8192 * 768 * 3072 / statistics.median(seconds[2:]) / 1e9:.0f} GMAC/s float32 matmul"


def device_line() -> str:
    if torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()}"
    return f"device: CPU, {torch.get_num_threads()} threads"


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark shares; scripts add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each quick measurement")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer repeats and samples")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser
