"""Greater-than (Hanna et al. 2023, "How does GPT-2 compute greater-than?").

Clean: ``"The war lasted from the year 1732 to the year 17"``; the model should continue with a
two-digit year YY' > 32. Corrupted: the same prompt with the start year's last two digits set to ``01``
(``"... from the year 1701 to the year 17"``), so every year from 02 counts as greater.

The paper's metric, which MIB keeps for this task, is the probability difference over the 100 two-digit
year tokens: ``sum p(YY' > YY) - sum p(YY' <= YY)`` (metric key ``greater_than_prob_diff``, the task's
default; :func:`year_tokens` gives the candidates). A mechwork task also has one answer and one wrong
token per prompt: the answer is YY + 1 (the smallest correct year), the wrong token YY itself, so
``logit_diff`` works too and the probability difference can be rebuilt from the recorded tokens alone (the
cutoff is where ``wrong`` sits among the year tokens).

The start year must tokenise as the century and then YY (``" 1732"`` -> ``" 17"``, ``"32"``), as in GPT-2;
years for which the tokenizer does not split that way are left out (and counted).
"""

from __future__ import annotations

import random

from ._types import (
    Pair,
    PromptSet,
    TaskError,
    WordListCount,
    as_tokenizer,
    encode,
    filter_words,
    sample_pairs,
    single_token,
)

NOUNS = (
    "war", "expedition", "journey", "reign", "siege", "campaign", "treaty", "project", "study", "voyage",
    "dynasty", "rivalry", "marriage", "investigation", "pilgrimage", "trial", "tour", "plague", "negotiation",
    "friendship",
)
CENTURIES = tuple(range(11, 18))
START_YEARS = tuple(range(2, 99))  # YY in 02..98, so YY + 1 is a two-digit year and 01 is smaller
TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"


def year_tokens(tokenizer_or_model) -> tuple[int, ...]:
    """The tokens of ``"00"`` .. ``"99"`` (the greater-than metric's candidates); a :class:`TaskError` if
    any is not one token."""
    tokenizer = as_tokenizer(tokenizer_or_model)
    ids = [single_token(tokenizer, f"{y:02d}") for y in range(100)]
    if missing := [f"{y:02d}" for y, i in enumerate(ids) if i is None]:
        raise TaskError(f"the greater-than probability difference needs the 100 two-digit years as single tokens; "
                        f"{len(missing)} are not ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); "
                        "use metric logit_diff instead")
    return tuple(ids)  # type: ignore[arg-type]


def _splits(tokenizer, century: int, yy: int) -> bool:
    """Whether " CCYY" tokenises as " CC" then "YY", with "YY" one token."""
    tail = single_token(tokenizer, f"{yy:02d}")
    return tail is not None and encode(tokenizer, f" {century}{yy:02d}") == encode(tokenizer, f" {century}") + [tail]


def _years(tokenizer, centuries: list[int]) -> tuple[list[tuple[int, int]], WordListCount]:
    """(century, YY) start years usable for this tokenizer: YY, YY + 1 and 01 single tokens after the
    century, in the clean and the corrupted prompt alike."""
    total = [(c, yy) for c in CENTURIES for yy in START_YEARS]
    kept = [(c, yy) for c, yy in total if c in centuries and _splits(tokenizer, c, yy) and _splits(tokenizer, c, 1)
            and single_token(tokenizer, f"{yy + 1:02d}") is not None]
    count = WordListCount("start years", len(total), len(kept),
                          tuple(f"{c}{yy:02d}" for c, yy in total if (c, yy) not in kept))
    if not kept:
        raise TaskError("greater-than: no start year tokenises as the century then two digits (' 1732' -> "
                        "' 17', '32') for this tokenizer")
    return kept, count


def _sampler(nouns: list[str], years: list[tuple[int, int]]):
    def sample(rng: random.Random) -> Pair:
        noun, (century, yy) = rng.choice(nouns), rng.choice(years)
        clean = TEMPLATE.format(noun=noun, century=century, yy=yy)
        corrupted = TEMPLATE.format(noun=noun, century=century, yy=1)
        return Pair(clean, corrupted, f"{yy + 1:02d}", f"{yy:02d}", {"noun": noun, "century": century, "yy": yy})

    return sample


def greater_than(tokenizer, n_prompts: int = 32, seed: int = 0) -> PromptSet:
    """Greater-than prompt pairs for ``tokenizer``."""
    tokenizer = as_tokenizer(tokenizer)
    centuries, century_count = filter_words(tokenizer, "centuries", [str(c) for c in CENTURIES], minimum=1,
                                            why="the start and end years' first two digits")
    years, year_count = _years(tokenizer, [int(c) for c in centuries])
    return sample_pairs(tokenizer, "greater-than", _sampler(list(NOUNS), years), n_prompts=n_prompts, seed=seed,
                        counts=[century_count, year_count], metric="greater_than_prob_diff")
