"""The registry of challenge kinds, and the token input spaces the built-in kinds share.

A challenge pack names, for each question, a registered kind and that kind's input space as JSON::

    "questions": [{"kind": "program", "space": {"prefix": [], "values": ["0", ..., "112"],
                                                 "suffix": ["="], "labels": ["L0", "L1"]}}]

The kind parses the space once (:class:`ChallengeKind`'s ``parse_space``), and its reader and scorer
use the parsed value; nothing assumes one model's input layout. Built in (registered in ``_scoring``):
``program`` (recover ``label(a, b)`` over ``prefix a b suffix``), ``trigger`` (find the token sequence
that, inserted into ``prefix x1 .. xL suffix``, flips a clean rule) and ``circuit``; in ``_sequence``,
``sequence-program`` (recover ``program(tokens)`` of a compiled model, blind). Register your own
with :func:`register_kind`; a duplicate name is refused.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from ..models.zoo import pairs, trojan
from ._types import ChallengeError, ChallengeKind

ASKS = ("program", "circuit", "trigger")  # the kinds a version-1 pack may ask

_KINDS: dict[str, ChallengeKind] = {}


class UnknownKindError(ChallengeError):
    """A challenge kind that is not registered."""


def register_kind(kind: ChallengeKind) -> ChallengeKind:
    """Register a kind under its name (a duplicate name is refused); returns it."""
    if not isinstance(kind, ChallengeKind):
        raise TypeError(f"register_kind takes a ChallengeKind, got {type(kind).__name__}")
    if kind.name in _KINDS:
        raise ChallengeError(f"a challenge kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str, where: str = "") -> ChallengeKind:
    """A registered kind by name; an unknown name raises :class:`UnknownKindError` with near matches."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_KINDS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        prefix = f"{where}: " if where else ""
        raise UnknownKindError(f"{prefix}no challenge kind {name!r}.{hint} Registered: {', '.join(sorted(_KINDS))} "
                               "(a kind defined in your own code must be registered with register_kind before "
                               "its packs are loaded)") from None


def kinds() -> list[ChallengeKind]:
    return [_KINDS[n] for n in sorted(_KINDS)]


# ---- checked JSON --------------------------------------------------------------------------------
def require(data, key: str, kind: type | tuple[type, ...], where: str):
    """``data[key]``, checked to be a ``kind``; errors name ``where`` and the key."""
    if not isinstance(data, dict):
        raise ChallengeError(f"{where}: must be a JSON object, got {type(data).__name__}")
    if key not in data:
        raise ChallengeError(f"{where}: missing key {key!r}")
    value, types = data[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        names = " or ".join(t.__name__ for t in types)
        raise ChallengeError(f"{where}.{key}: must be {names}, got {type(value).__name__}")
    return value


def refuse_unknown(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ChallengeError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")


# ---- token input spaces --------------------------------------------------------------------------
Token = str | int  # a token's name in the model's vocabulary, or its id


def _tokens(data: dict, key: str, where: str, *, required: bool = True) -> tuple[Token, ...]:
    if key not in data and not required:
        return ()
    items = require(data, key, list, where)
    bad = [t for t in items if isinstance(t, bool) or not isinstance(t, (str, int))]
    if bad:
        raise ChallengeError(f"{where}.{key}: tokens are names (strings) or ids (integers), got {bad[:3]}")
    return tuple(items)


@dataclass(frozen=True)
class TokenSpace:
    """Prompts ``prefix x1 .. x{length} suffix`` with each x one of ``values``; the answer is one of
    ``labels`` at the last position. Tokens are names in the model's vocabulary or ids; they are checked
    against the model in :meth:`resolve`."""

    prefix: tuple[Token, ...]
    values: tuple[Token, ...]
    length: int
    suffix: tuple[Token, ...]
    labels: tuple[Token, ...]

    KEYS = frozenset({"prefix", "values", "length", "suffix", "labels"})

    @classmethod
    def parse(cls, data, where: str, *, length: int | None = None, extra: frozenset[str] = frozenset()
              ) -> TokenSpace:
        """From JSON ``{"prefix": [...], "values": [...], "length": L, "suffix": [...], "labels": [...]}``
        (``prefix``/``suffix`` optional; ``length`` fixed by the kind where given)."""
        values, labels = _tokens(data, "values", where), _tokens(data, "labels", where)
        refuse_unknown(data, set(cls.KEYS if length is None else cls.KEYS - {"length"}) | extra, where)
        n = require(data, "length", int, where) if length is None else length
        if n < 1:
            raise ChallengeError(f"{where}.length: must be at least 1, got {n}")
        if len(values) < 2 or len(set(values)) != len(values):
            raise ChallengeError(f"{where}.values: needs at least two distinct tokens")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ChallengeError(f"{where}.labels: needs at least two distinct tokens")
        return cls(_tokens(data, "prefix", where, required=False), values, n,
                   _tokens(data, "suffix", where, required=False), labels)

    def to_json(self) -> dict:
        return {"prefix": list(self.prefix), "values": list(self.values), "length": self.length,
                "suffix": list(self.suffix), "labels": list(self.labels)}

    def resolve(self, model, where: str) -> TokenIds:
        """Token ids in ``model``'s vocabulary (names looked up in its tokenizer), checked once."""
        vocab = model.tokenizer.get_vocab() if getattr(model, "tokenizer", None) is not None else None
        d_vocab = model.cfg.d_vocab

        def ids(tokens: tuple[Token, ...], key: str) -> Tensor:
            out = []
            for t in tokens:
                if isinstance(t, str):
                    if vocab is None:
                        raise ChallengeError(f"{where}.{key}: token {t!r} is a name, but the model has no "
                                             "tokenizer to look it up (give ids instead)")
                    if t not in vocab:
                        near = difflib.get_close_matches(t, list(vocab), n=2)
                        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
                        raise ChallengeError(f"{where}.{key}: token {t!r} is not in the model's vocabulary.{hint}")
                    t = vocab[t]
                if not 0 <= t < d_vocab:
                    raise ChallengeError(f"{where}.{key}: token id {t} is outside the model's vocabulary "
                                         f"(0 .. {d_vocab - 1})")
                out.append(t)
            return torch.tensor(out, dtype=torch.long)

        return TokenIds(ids(self.prefix, "prefix"), ids(self.values, "values"), self.length,
                        ids(self.suffix, "suffix"), ids(self.labels, "labels"))


@dataclass(frozen=True)
class TokenIds:
    """A :class:`TokenSpace` resolved against a model: every token as an id."""

    prefix: Int[Tensor, " p"]
    values: Int[Tensor, " v"]
    length: int
    suffix: Int[Tensor, " s"]
    labels: Int[Tensor, " k"]

    def prompts(self, choices: Int[Tensor, "n length"]) -> Int[Tensor, "n pos"]:
        """Prompts from value indices (``choices[i, j]`` indexes ``values``)."""
        n = len(choices)
        return torch.cat([self.prefix.expand(n, -1), self.values[choices], self.suffix.expand(n, -1)], dim=1)

    def every_input(self) -> Int[Tensor, "n length"]:
        """Every input as value indices, in row-major order (row ``a * V + b`` for length 2)."""
        grids = torch.meshgrid(*[torch.arange(len(self.values))] * self.length, indexing="ij")
        return torch.stack([g.flatten() for g in grids], dim=1)


def pairs_space() -> dict:
    """The zoo ``pairs`` model's input space, ``[a, b, =]`` (the ``program`` kind's JSON)."""
    return {"prefix": [], "values": [pairs.VOCAB[pairs.NUMBER_OFFSET + i] for i in range(pairs.P)],
            "suffix": [pairs.VOCAB[pairs.EQUALS]], "labels": [pairs.VOCAB[t] for t in pairs.LABEL_TOKENS.tolist()]}


def trojan_space() -> dict:
    """The zoo ``trojan`` model's input space, ``<bos> x1 .. x9 =`` with the majority rule (the ``trigger``
    kind's JSON)."""
    return {"prefix": [trojan.VOCAB[0]],
            "values": [trojan.VOCAB[trojan.VALUE_OFFSET + i] for i in range(trojan.N_VALUES)],
            "length": trojan.SEQ, "suffix": [trojan.VOCAB[trojan.EQUALS]],
            "labels": [trojan.VOCAB[t] for t in trojan.LABEL_TOKENS.tolist()],
            "clean_rule": {"rule": "majority", "high_from": trojan.N_VALUES // 2}}
