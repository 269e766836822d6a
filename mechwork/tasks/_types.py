"""What a standard-task generator returns (a :class:`PromptSet` with its :class:`TaskReport`), and the
tokenizer checks every generator shares: which words are one token, and whether a pair is well formed.

A generator only needs a tokenizer: a Hugging Face tokenizer, or anything with a ``tokenizer`` attribute
(a booted model). Words are tested as they appear in the prompts, after a space (``" Mary"``), and a word
that the tokenizer maps to its unknown token counts as not being a token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class TaskError(ValueError):
    """A standard task cannot make the prompts asked for (too few single-token words, unknown task, ...)."""


def as_tokenizer(tokenizer_or_model):
    """The tokenizer itself, or a model's ``tokenizer``."""
    if hasattr(tokenizer_or_model, "encode"):
        return tokenizer_or_model
    inner = getattr(tokenizer_or_model, "tokenizer", None)
    if inner is None or not hasattr(inner, "encode"):
        raise TaskError(f"expected a tokenizer or a model with a tokenizer, got {type(tokenizer_or_model).__name__}")
    return inner


def encode(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, without special tokens (no BOS: prompts and answers alike)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def single_token(tokenizer, text: str) -> int | None:
    """The one token ``text`` is, or None where it is several tokens, none, or the unknown token."""
    ids = encode(tokenizer, text)
    unk = getattr(tokenizer, "unk_token_id", None)
    return ids[0] if len(ids) == 1 and ids[0] != unk else None


@dataclass(frozen=True)
class WordListCount:
    """How many words of one list survived the single-token filter."""

    name: str
    total: int
    kept: int
    dropped: tuple[str, ...]

    def line(self) -> str:
        shown = ", ".join(self.dropped[:5]) + (", ..." if len(self.dropped) > 5 else "")
        return f"{self.name} {self.kept}/{self.total} single tokens" + (f" (dropped: {shown})" if self.dropped else "")


@dataclass(frozen=True)
class TaskReport:
    """What a generator kept: per word list, the token length every prompt of the set has (``length``,
    without special tokens), how many sampled pairs it discarded because clean and corrupted tokenised to
    different lengths, and how many well-formed pairs it set aside because they had another length."""

    task: str
    word_lists: tuple[WordListCount, ...]
    n_prompts: int
    seed: int
    length: int
    unequal_pairs_dropped: int = 0
    other_length_pairs: int = 0

    def summary(self) -> str:
        parts = [c.line() for c in self.word_lists]
        if self.unequal_pairs_dropped:
            parts.append(f"{self.unequal_pairs_dropped} sampled pairs of unequal token length dropped")
        if self.other_length_pairs:
            parts.append(f"{self.other_length_pairs} pairs of other lengths set aside")
        return (f"{self.task}: {self.n_prompts} prompt pairs of {self.length} tokens (seed {self.seed}); "
                + "; ".join(parts))


@dataclass(frozen=True)
class PromptSet:
    """Clean/corrupted prompt pairs as text: each pair the same number of tokens, ``answers`` and ``wrong``
    one token each (read at the last position). ``details`` says, per pair, what was sampled (the names, the
    years, ...), so the construction can be checked. ``metric``: the task's default metric key."""

    task: str
    clean: tuple[str, ...]
    corrupted: tuple[str, ...]
    answers: tuple[str, ...]
    wrong: tuple[str, ...]
    details: tuple[dict, ...]
    report: TaskReport
    metric: str = "logit_diff"

    def __len__(self) -> int:
        return len(self.clean)

    def lists(self) -> dict[str, list[str]]:
        """The four prompt lists, as an experiment's ``[task]`` or a prompts file gives them."""
        return {"clean": list(self.clean), "corrupted": list(self.corrupted), "answers": list(self.answers),
                "wrong": list(self.wrong)}


def filter_words(tokenizer, name: str, words: Sequence[str], *, minimum: int, why: str,
                 template: str = " {}") -> tuple[list[str], WordListCount]:
    """The words of ``words`` that are one token as they appear (``template``), with their count; a
    :class:`TaskError` if fewer than ``minimum`` survive (``why`` says what they are needed for)."""
    kept = [w for w in words if single_token(tokenizer, template.format(w)) is not None]
    count = WordListCount(name, len(words), len(kept), tuple(w for w in words if w not in kept))
    if len(kept) < minimum:
        raise TaskError(f"only {len(kept)} of {len(words)} {name} are single tokens for this tokenizer; "
                        f"at least {minimum} are needed ({why})")
    return kept, count


@dataclass(frozen=True)
class Pair:
    """One sampled pair, before the tokenizer has checked it."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    details: dict = field(default_factory=dict)


def pair_problems(tokenizer, pair: Pair) -> list[str]:
    """What is wrong with ``pair`` for this tokenizer: unequal lengths, answers that are not one token."""
    problems = []
    n_clean, n_corrupted = len(encode(tokenizer, pair.clean)), len(encode(tokenizer, pair.corrupted))
    if n_clean != n_corrupted:
        problems.append(f"clean is {n_clean} tokens, corrupted {n_corrupted}")
    for what, text in (("answer", pair.answer), ("wrong", pair.wrong)):
        if single_token(tokenizer, text) is None:
            problems.append(f"{what} {text!r} is not one token")
    if pair.answer == pair.wrong:
        problems.append(f"answer and wrong are both {pair.answer!r}")
    return problems


def check_prompt_set(tokenizer_or_model, prompts: PromptSet) -> None:
    """Raise a :class:`TaskError` naming every pair that is not well formed for this tokenizer, and a set
    whose prompts are not all the same token length."""
    tokenizer = as_tokenizer(tokenizer_or_model)
    bad = []
    for i, fields in enumerate(zip(prompts.clean, prompts.corrupted, prompts.answers, prompts.wrong, strict=True)):
        if problems := pair_problems(tokenizer, Pair(*fields)):
            bad.append(f"pair {i + 1}: {'; '.join(problems)}")
    lengths = sorted({len(encode(tokenizer, p)) for p in prompts.clean})
    if len(lengths) > 1:  # padded to one length, the metric's last position would miss the shorter prompts
        bad.append(f"the clean prompts have {len(lengths)} different token lengths ({', '.join(map(str, lengths))}); "
                   "the metric reads one position, so every prompt must have the same")
    if bad:
        raise TaskError(f"{prompts.task}: {len(bad)} problems in {len(prompts)} pairs: " + " | ".join(bad[:5]))


def sample_pairs(tokenizer, task: str, sample: Callable[[random.Random], Pair], *, n_prompts: int, seed: int,
                 counts: Sequence[WordListCount], metric: str) -> PromptSet:
    """Draw ``n_prompts`` distinct well-formed pairs with ``sample`` (seeded: the same seed gives the same
    prompts), all of one token length: the metric reads one position for every prompt, so the first length
    to reach ``n_prompts`` pairs wins (templates and words of other lengths are set aside, and counted). Pairs
    of unequal clean/corrupted length are dropped and counted. A :class:`TaskError` if the word lists cannot
    make that many distinct pairs of one length."""
    if not isinstance(n_prompts, int) or isinstance(n_prompts, bool) or n_prompts < 1:
        raise TaskError(f"{task}: n_prompts must be a positive integer, got {n_prompts!r}")
    rng = random.Random(seed)
    by_length: dict[int, list[Pair]] = {}
    seen: set[str] = set()
    unequal = 0
    for _ in range(max(2000, 100 * n_prompts)):
        pair = sample(rng)
        if pair.clean in seen:
            continue
        seen.add(pair.clean)
        if pair_problems(tokenizer, pair):
            unequal += 1
            continue
        bucket = by_length.setdefault(len(encode(tokenizer, pair.clean)), [])
        bucket.append(pair)
        if len(bucket) == n_prompts:
            break
    length, pairs = max(by_length.items(), key=lambda kv: len(kv[1]), default=(0, []))
    if len(pairs) < n_prompts:
        raise TaskError(f"{task}: could make only {len(pairs)} distinct well-formed prompt pairs of one token length "
                        f"of the {n_prompts} asked for with this tokenizer ({'; '.join(c.line() for c in counts)}; "
                        f"{unequal} pairs of unequal length); ask for fewer")
    others = sum(len(b) for n, b in by_length.items() if n != length)
    report = TaskReport(task, tuple(counts), n_prompts, seed, length, unequal, others)
    return PromptSet(task, *(tuple(getattr(p, k) for p in pairs) for k in ("clean", "corrupted", "answer", "wrong")),
                     tuple(p.details for p in pairs), report, metric)
