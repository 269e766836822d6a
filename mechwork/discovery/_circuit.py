"""The ``Circuit`` result: edges with scores, how they were found, how faithful they are, as JSON.

A circuit file is JSON with ``"schema": "mechwork.circuit"`` and an integer ``"version"``. It carries
the prompts themselves (token ids), so anyone can reload the model by reference, check its weight
hash, rerun the circuit and compare (``mechwork verify``). Reading refuses unknown schemas and newer
versions, and names the key at fault in a malformed file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .._io import atomic_write_json, read_json

SCHEMA = "mechwork.circuit"
VERSION = 1


class CircuitFileError(ValueError):
    """A circuit file that cannot be read: malformed JSON, wrong schema, newer version, missing keys."""


@dataclass(frozen=True)
class Circuit:
    model: dict  # spec, weights_sha256, n_layers, n_heads
    task: dict  # name, metric, ablation, position, positions, prompts {clean, corrupted, answers, wrong}
    method: str
    options: dict
    edges: dict[str, float]  # every scored edge -> score
    selected: tuple[str, ...]  # the circuit's edges
    selection: dict  # how, value
    faithfulness: dict  # value, full_value, empty_value, curve
    ground_truth: dict | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return len(self.selected)

    def to_dict(self) -> dict:
        """A deep copy: editing it never changes this circuit."""
        return copy.deepcopy({
            "schema": SCHEMA,
            "version": VERSION,
            "model": self.model,
            "task": self.task,
            "method": self.method,
            "options": self.options,
            "selection": self.selection,
            "circuit": sorted(self.selected),
            "faithfulness": self.faithfulness,
            "ground_truth": self.ground_truth,
            "edges": [{"edge": e, "score": s} for e, s in self.edges.items()],
            "provenance": self.provenance,
        })

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: an interrupted save never leaves a half-written file."""
        return atomic_write_json(path, self.to_dict(), allow_nan=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Circuit:
        data = read_json(path, CircuitFileError, f"{path}: no such circuit file")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: object, where: str = "circuit") -> Circuit:
        if not isinstance(data, dict):
            raise CircuitFileError(f"{where}: the top level must be a JSON object")
        if data.get("schema") != SCHEMA:
            raise CircuitFileError(f"{where}: 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
        version = data.get("version")
        if not isinstance(version, int):
            raise CircuitFileError(f"{where}: 'version' must be an integer, got {version!r}")
        if version > VERSION:
            raise CircuitFileError(
                f"{where}: written with circuit schema version {version}; this mechwork reads up to "
                f"version {VERSION} — upgrade mechwork"
            )
        _require(data, where, model=dict, task=dict, method=str, options=dict, selection=dict, circuit=list,
                 faithfulness=dict, edges=list)
        _require(data["model"], f"{where}: 'model'", spec=str, weights_sha256=str, n_layers=int, n_heads=int)
        _require(data["task"], f"{where}: 'task'", metric=str, ablation=str, position=int, prompts=dict)
        edges = {}
        for i, item in enumerate(data["edges"]):
            if not (isinstance(item, dict) and isinstance(item.get("edge"), str)
                    and isinstance(item.get("score"), (int, float))):
                raise CircuitFileError(f"{where}: 'edges'[{i}] must be {{'edge': str, 'score': number}}, got {item!r}")
            edges[item["edge"]] = float(item["score"])
        return cls(data["model"], data["task"], data["method"], data["options"], edges,
                   tuple(data["circuit"]), data["selection"], data["faithfulness"], data.get("ground_truth"),
                   data.get("provenance", {}))

    def _repr_html_(self) -> str:
        from html import escape

        f = self.faithfulness
        gt = self.ground_truth or {}
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(_fmt(v))}</td></tr>" for k, v in {
            "model": self.model["spec"], "method": self.method, "edges in circuit": self.n_edges,
            "faithfulness": f.get("value"), "CPR": f.get("curve", {}).get("cpr"),
            "CMD": f.get("curve", {}).get("cmd"), "edge ROC AUC": gt.get("edge_roc_auc"),
        }.items())
        return f"<table><caption>mechwork circuit</caption>{rows}</table>"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _require(obj: dict, where: str, **types) -> None:
    for key, kind in types.items():
        if key not in obj:
            raise CircuitFileError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise CircuitFileError(f"{where}: key {key!r} must be {kind.__name__}, got {type(obj[key]).__name__}")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
