"""The computational graph of a transformer: nodes, edges, and where each edge lives in the mask.

Nodes are the input (embeddings), every attention head, every MLP and the logits. A destination's
input is the sum of its upstream nodes' outputs (plus constant biases), so an edge SRC->DST is one
term of that sum. A head has three inputs (q, k, v), each its own destination.

Sources are numbered in model order (``input``, then per layer its heads and its MLP); destinations
are grouped per layer so that one mask slice covers one hook point:

* ``attn[l]``: ``[3, n_heads, n_sources_attn(l)]`` for the q/k/v inputs of layer ``l``'s heads;
* ``mlp[l]``: ``[n_sources_mlp(l)]`` for layer ``l``'s MLP input;
* ``logits``: ``[n_sources]``.

Edges are flattened in that order, so a flat edge vector splits into these views without copying.
With ``positions`` set, every edge exists once per token position (``"SRC->DST@p"``), and each group
gains a leading position axis.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from .._nodes import INPUT, LOGITS, edge, head_node, mlp_node, parse_node
from ..models import BlockLayout, structure_of

PORTS = ("q", "k", "v")


class GraphError(ValueError):
    """An edge or node name that is not in the graph."""


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int
    positions: int | None = None  # number of token positions when edges are resolved by position
    # Attention and MLP both read the block's input (GPT-NeoX, GPT-J, ...): a layer's heads do not feed
    # its own MLP, so there are no same-layer head -> MLP edges.
    parallel: bool = False

    @classmethod
    def from_model(cls, model, *, positions: int | None = None) -> Graph:
        """The graph of ``model``; refuses (``UnsupportedModelError``, naming what is missing) a model whose
        block structure this graph does not describe, rather than give it wrong edges."""
        structure = structure_of(model)
        structure.require_edge_graph()
        if positions is not None and positions <= 0:
            raise ValueError(f"positions must be positive, got {positions}")
        return cls(structure.n_layers, structure.n_heads, positions, structure.layout is BlockLayout.PARALLEL)

    # ---- sources -------------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def n_sources_attn(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1)

    def n_sources_mlp(self, layer: int) -> int:
        """Sources feeding layer ``layer``'s MLP: everything below it, and its own heads unless parallel."""
        return self.n_sources_attn(layer) + (0 if self.parallel else self.n_heads)

    @cached_property
    def sources(self) -> tuple[str, ...]:
        names = [INPUT]
        for layer in range(self.n_layers):
            names += [head_node(layer, h) for h in range(self.n_heads)] + [mlp_node(layer)]
        return tuple(names)

    @cached_property
    def nodes(self) -> tuple[str, ...]:
        return (*self.sources, LOGITS)

    # ---- edge layout ---------------------------------------------------------------------------
    @cached_property
    def _group_sizes(self) -> tuple[int, ...]:
        sizes = []
        for layer in range(self.n_layers):
            sizes += [3 * self.n_heads * self.n_sources_attn(layer), self.n_sources_mlp(layer)]
        return (*sizes, self.n_sources)

    @cached_property
    def _group_offsets(self) -> tuple[int, ...]:
        offsets, total = [], 0
        for size in self._group_sizes:
            offsets.append(total)
            total += size
        return tuple(offsets)

    @property
    def n_edges_per_position(self) -> int:
        return sum(self._group_sizes)

    @property
    def n_edges(self) -> int:
        return self.n_edges_per_position * (self.positions or 1)

    @cached_property
    def _base_edges(self) -> tuple[str, ...]:
        names: list[str] = []
        for layer in range(self.n_layers):
            srcs = self.sources[: self.n_sources_attn(layer)]
            for port in PORTS:
                for h in range(self.n_heads):
                    names += [edge(s, head_node(layer, h), port) for s in srcs]
            names += [edge(s, mlp_node(layer)) for s in self.sources[: self.n_sources_mlp(layer)]]
        names += [edge(s, LOGITS) for s in self.sources]
        return tuple(names)

    @cached_property
    def edges(self) -> tuple[str, ...]:
        if self.positions is None:
            return self._base_edges
        return tuple(f"{e}@{p}" for p in range(self.positions) for e in self._base_edges)

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.edges)}

    def index(self, name: str) -> int:
        try:
            return self.edge_index[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.edges, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise GraphError(f"no edge {name!r} in this graph ({self.n_edges} edges).{hint}") from None

    @cached_property
    def edge_endpoints(self) -> tuple[tuple[int, int], ...]:
        """(source index, destination node index in ``nodes``) of every edge, ports merged."""
        node_index = {n: i for i, n in enumerate(self.nodes)}
        out = []
        for name in self.edges:
            src, dst = name.split("@")[0].split("->")
            out.append((node_index[src], node_index[parse_node(dst).name]))
        return tuple(out)

    def group_edges(self, layer: int | None, kind: str) -> range:
        """Flat indices (within one position) of the edges into one group: ``kind`` is ``"attn"``
        (layer ``layer``'s q/k/v inputs), ``"mlp"`` or ``"logits"``."""
        if kind == "logits":
            return range(self._group_offsets[-1], self.n_edges_per_position)
        g = 2 * layer + (0 if kind == "attn" else 1)
        return range(self._group_offsets[g], self._group_offsets[g] + self._group_sizes[g])

    @cached_property
    def _coordinates(self) -> tuple[tuple[int, int, int], ...]:
        coords: list[tuple[int, int, int]] = []
        for layer in range(self.n_layers):
            n_src = self.n_sources_attn(layer)
            coords += [(p, h, u) for p in range(3) for h in range(self.n_heads) for u in range(n_src)]
            coords += [(-1, -1, u) for u in range(self.n_sources_mlp(layer))]
        return (*coords, *((-1, -1, u) for u in range(self.n_sources)))

    def edge_coordinates(self, index: int) -> tuple[int, int, int]:
        """(port, head, source) of a flat edge index within one position; port/head -1 off heads."""
        return self._coordinates[index % self.n_edges_per_position]

    @cached_property
    def endpoint_tensor(self) -> Tensor:
        """``edge_endpoints`` as a ``[edges, 2]`` long tensor (source, destination node index)."""
        return torch.tensor(self.edge_endpoints, dtype=torch.long)

    # ---- masks ---------------------------------------------------------------------------------
    def full_mask(self, value: float = 1.0, **kwargs) -> Float[Tensor, " edges"]:
        return torch.full((self.n_edges,), float(value), **kwargs)

    def mask_of(self, kept: Iterable[str], **kwargs) -> Float[Tensor, " edges"]:
        """A 0/1 mask keeping exactly the named edges."""
        mask = self.full_mask(0.0, **kwargs)
        for name in kept:
            mask[self.index(name)] = 1.0
        return mask

    def split(self, flat: Tensor) -> MaskViews:
        """Views of a flat ``[edges]`` vector (or ``[..., edges]``) as per-hook groups."""
        lead = flat.shape[:-1]
        if flat.shape[-1] != self.n_edges:
            raise GraphError(f"mask has {flat.shape[-1]} entries, the graph has {self.n_edges} edges")
        per_pos = flat.reshape(*lead, self.positions, self.n_edges_per_position) if self.positions else flat
        attn, mlp = [], []
        for layer in range(self.n_layers):
            start = self._group_offsets[2 * layer]
            n_src = self.n_sources_attn(layer)
            block = per_pos[..., start : start + 3 * self.n_heads * n_src]
            attn.append(block.reshape(*block.shape[:-1], 3, self.n_heads, n_src))
            start = self._group_offsets[2 * layer + 1]
            mlp.append(per_pos[..., start : start + self.n_sources_mlp(layer)])
        logits = per_pos[..., self._group_offsets[-1] :]
        return MaskViews(tuple(attn), tuple(mlp), logits)


@dataclass(frozen=True)
class MaskViews:
    """One flat edge vector seen per hook group (shapes in the module docstring)."""

    attn: tuple[Tensor, ...]
    mlp: tuple[Tensor, ...]
    logits: Tensor
