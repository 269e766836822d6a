"""Subject-verb agreement (Linzen et al. 2016; Finlayson et al. 2021, "Causal analysis of syntactic agreement
mechanisms in neural language models"; MIB's ``sva``).

Clean: a subject, singular or plural (drawn evenly), optionally followed by a prepositional phrase with an
attractor noun of either number, then the verb: ``"The author near the pilots"`` -> `` is`` (not `` are``).
Corrupted: the same prompt with the subject's number flipped (``"The authors near the pilots"``), which
flips the answer. The answer is the verb form that agrees with the clean subject and the wrong token the
other form of the same verb; the metric is their logit difference. MIB sums the probability of every
singular verb against every plural one; a mechwork task takes one answer and one wrong token per prompt,
so each prompt carries one verb's two forms.
"""

from __future__ import annotations

import random

from ._types import Pair, PromptSet, TaskError, WordListCount, as_tokenizer, filter_words, sample_pairs

NOUNS = (
    ("author", "authors"), ("pilot", "pilots"), ("teacher", "teachers"), ("doctor", "doctors"),
    ("farmer", "farmers"), ("dancer", "dancers"), ("senator", "senators"), ("student", "students"),
    ("manager", "managers"), ("officer", "officers"), ("child", "children"), ("man", "men"), ("woman", "women"),
    ("guard", "guards"), ("driver", "drivers"), ("painter", "painters"), ("singer", "singers"),
    ("lawyer", "lawyers"), ("customer", "customers"), ("minister", "ministers"),
)
VERBS = (
    ("is", "are"), ("was", "were"), ("has", "have"), ("likes", "like"), ("knows", "know"), ("says", "say"),
    ("wants", "want"), ("thinks", "think"), ("seems", "seem"), ("runs", "run"),
)
TEMPLATES = ("The {subject}", "The {subject} near the {attractor}", "The {subject} behind the {attractor}")


def _pairs(tokenizer, name: str, pairs: tuple[tuple[str, str], ...], why: str):
    """The (singular, plural) pairs whose two forms are both one token."""
    singular, _ = filter_words(tokenizer, name, [s for s, _ in pairs], minimum=0, why=why)
    plural, _ = filter_words(tokenizer, name, [p for _, p in pairs], minimum=0, why=why)
    kept = [pair for pair in pairs if pair[0] in singular and pair[1] in plural]
    count = WordListCount(name, len(pairs), len(kept), tuple(f"{s}/{p}" for s, p in pairs if (s, p) not in kept))
    if not kept:
        raise TaskError(f"sva: none of the {len(pairs)} {name} has both forms as single tokens; at least one is "
                        f"needed ({why})")
    return kept, count


def _sampler(nouns: list[tuple[str, str]], verbs: list[tuple[str, str]]):
    def sample(rng: random.Random) -> Pair:
        template, noun, verb = rng.randrange(len(TEMPLATES)), rng.choice(nouns), rng.choice(verbs)
        number = rng.randrange(2)  # 0 singular, 1 plural
        attractor = rng.choice(nouns)[rng.randrange(2)]
        clean = TEMPLATES[template].format(subject=noun[number], attractor=attractor)
        corrupted = TEMPLATES[template].format(subject=noun[1 - number], attractor=attractor)
        details = {"subject": noun[number], "corrupted_subject": noun[1 - number],
                   "number": ("singular", "plural")[number], "verb": verb, "template": template}
        return Pair(clean, corrupted, f" {verb[number]}", f" {verb[1 - number]}", details)

    return sample


def sva(tokenizer, n_prompts: int = 32, seed: int = 0) -> PromptSet:
    """Subject-verb agreement prompt pairs for ``tokenizer``."""
    tokenizer = as_tokenizer(tokenizer)
    nouns, noun_count = _pairs(tokenizer, "noun pairs", NOUNS, "a subject in both numbers")
    verbs, verb_count = _pairs(tokenizer, "verb pairs", VERBS, "a verb in both numbers")
    return sample_pairs(tokenizer, "sva", _sampler(nouns, verbs), n_prompts=n_prompts, seed=seed,
                        counts=[noun_count, verb_count], metric="logit_diff")
