"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild").

Clean: two people are introduced, then one of them (the subject S) gives something to the other (the
indirect object IO); the prompt ends before the IO: ``"Then, Mary and John went to the store. John gave a
drink to"`` -> `` Mary``. Both name orders (ABBA and BABA) are drawn. The metric is the logit difference
IO - S at the last position.

Corrupted (``counterfactual="abc"``, the default): the same template and words with the three names
replaced by three other, distinct names (the paper's "ABC" distribution, also the corruption of ACDC and
EAP-IG): neither IO nor S appears in it, so nothing in it points at either. ``counterfactual="s2_io_flip"``
is MIB's default instead: the second mention of S becomes the IO, which flips the answer to S.
"""

from __future__ import annotations

import random

from ._types import Pair, PromptSet, TaskError, as_tokenizer, filter_words, sample_pairs

NAMES = (
    "Mary", "John", "Alice", "Bob", "James", "Sarah", "Michael", "Emma", "David", "Laura", "Daniel", "Anna",
    "Thomas", "Rachel", "Paul", "Kate", "Mark", "Lisa", "Peter", "Julia", "George", "Emily", "Steven", "Helen",
    "Kevin", "Amy", "Brian", "Grace", "Eric", "Rose", "Adam", "Jessica", "Ryan", "Sophie", "Jason", "Linda",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "park", "house")
OBJECTS = ("drink", "book", "ring", "ball", "computer", "necklace", "bottle", "letter", "flower")

# {A} and {B} are the first two mentions (IO and S in either order), {S2} the second mention of S
TEMPLATES = (
    "Then, {A} and {B} went to the {place}. {S2} gave a {object} to",
    "When {A} and {B} went to the {place}, {S2} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S2} handed a {object} to",
    "While {A} and {B} were working at the {place}, {S2} gave a {object} to",
    "Then, {A} and {B} had a long talk at the {place}. {S2} passed a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S2} gave it to",
)
COUNTERFACTUALS = ("abc", "s2_io_flip")


def _fill(template: str, first: str, second: str, s2: str, place: str, obj: str) -> str:
    return template.format(A=first, B=second, S2=s2, place=place, object=obj)


def _sampler(names: list[str], counterfactual: str):
    def sample(rng: random.Random) -> Pair:
        template = rng.randrange(len(TEMPLATES))
        io, s, *others = rng.sample(names, 5)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        order = rng.choice(("ABBA", "BABA"))
        first, second = (io, s) if order == "ABBA" else (s, io)
        clean = _fill(TEMPLATES[template], first, second, s, place, obj)
        if counterfactual == "abc":
            corrupted = _fill(TEMPLATES[template], *others, place, obj)
            corrupted_names = tuple(others)
        else:
            corrupted = _fill(TEMPLATES[template], first, second, io, place, obj)
            corrupted_names = (first, second, io)
        details = {"io": io, "s": s, "order": order, "template": template, "corrupted_names": corrupted_names,
                   "counterfactual": counterfactual}
        return Pair(clean, corrupted, f" {io}", f" {s}", details)

    return sample


def ioi(tokenizer, n_prompts: int = 32, seed: int = 0, *, counterfactual: str = "abc",
        names: tuple[str, ...] = NAMES) -> PromptSet:
    """IOI prompt pairs for ``tokenizer``; names that are not one token (after a space) are left out."""
    if counterfactual not in COUNTERFACTUALS:
        raise TaskError(f"ioi: unknown counterfactual {counterfactual!r}; choose one of {', '.join(COUNTERFACTUALS)}")
    tokenizer = as_tokenizer(tokenizer)
    kept, count = filter_words(tokenizer, "names", names, minimum=5,
                               why="IO and S, and three unrelated names for the ABC corruption")
    return sample_pairs(tokenizer, "ioi", _sampler(kept, counterfactual), n_prompts=n_prompts, seed=seed,
                        counts=[count], metric="logit_diff")
