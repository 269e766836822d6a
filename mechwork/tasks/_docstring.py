"""Docstring (Heimersheim & Janiak 2023, "A circuit for Python docstrings in a 4-layer attention-only
transformer"; one of ACDC's tasks).

Clean: a function definition with four parameters and a docstring that documents the first two; the
prompt ends at the third ``:param``, so the answer is the next parameter name::

    def fetch(self, files, size, mode, last):
        \"\"\"oil column piece

        :param files: crime population
        :param size: unit dark
        :param            -> " mode"

Corrupted (the paper's ``random_random``, ACDC's choice): the same text with the definition's parameters
and the docstring's parameter names replaced by six other, distinct names (so the docstring no longer
matches the definition and the answer appears nowhere). Metric: logit difference of the answer against
one distractor, the definition's next parameter (``last``: the name a model that merely copies the next
undocumented argument would also consider). The paper compares against the largest logit among all wrong
parameter names; a mechwork task takes one wrong token per prompt.
"""

from __future__ import annotations

import random

from ._types import Pair, PromptSet, as_tokenizer, filter_words, sample_pairs

NAMES = (
    "load", "size", "files", "last", "data", "value", "name", "path", "mode", "key", "text", "item", "user",
    "index", "count", "model", "start", "end", "page", "line", "state", "result", "source", "target", "image",
    "url", "token", "config", "option", "query", "field", "color",
)
FUNCTIONS = ("fetch", "run", "get", "update", "check", "process", "send", "read", "build", "parse")
WORDS = (
    "oil", "column", "piece", "crime", "population", "unit", "dark", "river", "market", "song", "tree", "light",
    "stone", "glass", "paper", "window", "animal", "music", "storm", "forest", "table", "coffee", "plant", "metal",
)
TEMPLATE = ('def {func}(self, {a}, {b}, {c}, {d}):\n    """{desc}\n\n'
            '    :param {e}: {desc_e}\n    :param {f}: {desc_f}\n    :param')


def _sampler(names: list[str]):
    def sample(rng: random.Random) -> Pair:
        a, b, c, d, *others = rng.sample(names, 10)
        words = {"func": rng.choice(FUNCTIONS), "desc": " ".join(rng.sample(WORDS, 3)),
                 "desc_e": " ".join(rng.sample(WORDS, 2)), "desc_f": " ".join(rng.sample(WORDS, 2))}
        clean = TEMPLATE.format(a=a, b=b, c=c, d=d, e=a, f=b, **words)
        ca, cb, cc, cd, ce, cf = others
        corrupted = TEMPLATE.format(a=ca, b=cb, c=cc, d=cd, e=ce, f=cf, **words)
        details = {"params": (a, b, c, d), "corrupted_params": (ca, cb, cc, cd), "corrupted_doc": (ce, cf)}
        return Pair(clean, corrupted, f" {c}", f" {d}", details)

    return sample


def docstring(tokenizer, n_prompts: int = 32, seed: int = 0) -> PromptSet:
    """Docstring prompt pairs for ``tokenizer``; parameter names that are not one token are left out."""
    tokenizer = as_tokenizer(tokenizer)
    kept, count = filter_words(tokenizer, "parameter names", NAMES, minimum=10,
                               why="four parameters, and six other names for the corrupted prompt")
    return sample_pairs(tokenizer, "docstring", _sampler(kept), n_prompts=n_prompts, seed=seed, counts=[count],
                        metric="logit_diff")
