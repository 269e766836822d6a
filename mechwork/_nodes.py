"""Node and edge names of the computational graph, shared by every layer.

Nodes: ``input`` (embeddings), ``blocks.{l}.attn.head.{h}``, ``blocks.{l}.mlp``, ``logits``.
An edge is ``"SRC->DST"``; a head destination names the input it feeds: ``blocks.{l}.attn.head.{h}.q``.
With grouped-query attention the keys and values are computed once per key/value head, shared by a
group of query heads, so their inputs are destinations of their own: ``blocks.{l}.attn.kv_head.{g}.k``
(``.v``). A key/value head is only a destination; its group's query heads are the sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INPUT, LOGITS = "input", "logits"
_HEAD = re.compile(r"^blocks\.(\d+)\.attn\.head\.(\d+)(?:\.([qkv]))?$")
_KV_HEAD = re.compile(r"^blocks\.(\d+)\.attn\.kv_head\.(\d+)(?:\.([kv]))?$")
_MLP = re.compile(r"^blocks\.(\d+)\.mlp$")


def head_node(layer: int, head: int) -> str:
    return f"blocks.{layer}.attn.head.{head}"


def kv_head_node(layer: int, group: int) -> str:
    return f"blocks.{layer}.attn.kv_head.{group}"


def mlp_node(layer: int) -> str:
    return f"blocks.{layer}.mlp"


def edge(src: str, dst: str, port: str | None = None) -> str:
    """``edge("input", head_node(1, 0), "q")`` -> ``"input->blocks.1.attn.head.0.q"``."""
    return f"{src}->{dst}.{port}" if port else f"{src}->{dst}"


@dataclass(frozen=True)
class NodeRef:
    """A parsed node (or head input) name."""

    kind: str  # "input" | "head" | "kv_head" | "mlp" | "logits"
    layer: int | None = None
    head: int | None = None  # the query head, or for "kv_head" the key/value head
    port: str | None = None  # "q" | "k" | "v" for a head's input

    @property
    def name(self) -> str:
        if self.kind == "head":
            return head_node(self.layer, self.head)
        if self.kind == "kv_head":
            return kv_head_node(self.layer, self.head)
        if self.kind == "mlp":
            return mlp_node(self.layer)
        return self.kind


def parse_node(name: str) -> NodeRef:
    if name in (INPUT, LOGITS):
        return NodeRef(name)
    if m := _HEAD.match(name):
        return NodeRef("head", int(m[1]), int(m[2]), m[3])
    if m := _KV_HEAD.match(name):
        return NodeRef("kv_head", int(m[1]), int(m[2]), m[3])
    if m := _MLP.match(name):
        return NodeRef("mlp", int(m[1]))
    raise ValueError(
        f"not a node name: {name!r} (expected 'input', 'logits', 'blocks.L.mlp', 'blocks.L.attn.head.H' "
        "or a head input 'blocks.L.attn.head.H.q|k|v' (grouped-query attention: 'blocks.L.attn.kv_head.G.k|v')"
    )


def edge_nodes(name: str) -> tuple[str, str]:
    """Source and destination *node* of an edge name (a head's q/k/v port stripped)."""
    try:
        src, dst = name.split("->")
    except ValueError:
        raise ValueError(f"not an edge name: {name!r} (expected 'SRC->DST')") from None
    return parse_node(src).name, parse_node(dst).name
