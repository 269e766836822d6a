"""The computational graph of a transformer: nodes, edges, and where each edge lives in the mask.

Nodes are the input (embeddings), every attention head, every MLP and the logits. A destination's
input is the sum of its upstream nodes' outputs (plus constant biases), so an edge SRC->DST is one
term of that sum. A head has three inputs (q, k, v), each its own destination.

Grouped-query attention (``n_kv_heads < n_heads``): keys and values are computed once per key/value
head and shared by its group of ``n_heads / n_kv_heads`` query heads, so the k and v destinations are
the key/value heads (``blocks.L.attn.kv_head.G.k``), as the model computes them; ablating such an edge
changes the keys (values) that every query head of the group reads. (TransformerLens's un-grouping
would instead give each query head a private copy, a different model.) Query head ``h`` reads
key/value head ``h // (n_heads / n_kv_heads)``, as Hugging Face's ``repeat_kv`` lays them out.

Sources are numbered in model order (``input``, then per layer its heads and its MLP); destinations
are grouped per layer so that one mask slice covers one hook point:

* ``attn[l]``: per port (q, k, v) ``[heads, n_sources_attn(l)]`` for the inputs of layer ``l``'s heads
  (``n_heads`` query heads; ``n_kv_heads`` key/value heads for k and v);
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

from .._nodes import INPUT, LOGITS, edge, head_node, kv_head_node, mlp_node, parse_node
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
    n_kv_heads: int | None = None  # key/value heads; None: one per query head

    def __post_init__(self) -> None:
        if self.n_heads % self.kv_heads:
            raise ValueError(f"{self.n_heads} query heads cannot be grouped over {self.kv_heads} key/value heads")

    @classmethod
    def from_model(cls, model, *, positions: int | None = None) -> Graph:
        """The graph of ``model``; refuses (``UnsupportedModelError``, naming what is missing) a model whose
        block structure this graph does not describe, rather than give it wrong edges."""
        structure = structure_of(model)
        structure.require_edge_graph()
        if positions is not None and positions <= 0:
            raise ValueError(f"positions must be positive, got {positions}")
        return cls(structure.n_layers, structure.n_heads, positions, structure.layout is BlockLayout.PARALLEL,
                   structure.n_kv_heads if structure.grouped_query else None)

    # ---- attention ports -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: k and v destinations are key/value heads."""
        return self.kv_heads != self.n_heads

    def port_heads(self, port: int) -> int:
        """Destinations per layer for port 0/1/2 (q/k/v)."""
        return self.n_heads if port == 0 else self.kv_heads

    def port_destination(self, layer: int, port: int, head: int) -> str:
        """The node whose ``PORTS[port]`` input is destination ``head`` of that port."""
        return kv_head_node(layer, head) if port and self.grouped else head_node(layer, head)

    @property
    def queries_per_kv_head(self) -> int:
        return self.n_heads // self.kv_heads

    def kv_group(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // self.queries_per_kv_head

    def _kv_head_index(self, layer: int, group: int) -> int:
        """Index in ``nodes`` of a key/value head (they follow the logits, layer by layer)."""
        return self.logits_index + 1 + layer * self.kv_heads + group

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
        """Sources, the logits, then (grouped-query attention) the key/value heads: a source's index in
        ``sources`` is its index here, and ``logits`` is ``nodes[n_sources]``."""
        kv = [kv_head_node(layer, g) for layer in range(self.n_layers) for g in range(self.kv_heads)]
        return (*self.sources, LOGITS, *(kv if self.grouped else ()))

    @property
    def logits_index(self) -> int:
        return self.n_sources

    def readers(self, node: int) -> tuple[int, ...]:
        """Sources whose output depends on destination node ``node``'s input: the node itself, or the query
        heads of a key/value head's group (none for the logits)."""
        if node < self.n_sources:
            return (node,)
        if node == self.logits_index:
            return ()
        ref = parse_node(self.nodes[node])
        per = self.queries_per_kv_head
        return tuple(self.head_source(ref.layer, h) for h in range(ref.head * per, (ref.head + 1) * per))

    def destinations_of(self, source: int) -> tuple[int, ...]:
        """Destination nodes whose input feeds ``source``'s output (inverse of :meth:`readers`)."""
        if source == 0:
            return ()
        ref = parse_node(self.sources[source])
        if not self.grouped or ref.kind != "head":
            return (source,)
        return (source, self._kv_head_index(ref.layer, self.kv_group(ref.head)))

    # ---- edge layout ---------------------------------------------------------------------------
    @cached_property
    def _group_sizes(self) -> tuple[int, ...]:
        sizes = []
        for layer in range(self.n_layers):
            sizes += [(self.n_heads + 2 * self.kv_heads) * self.n_sources_attn(layer), self.n_sources_mlp(layer)]
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
            for p, port in enumerate(PORTS):
                for h in range(self.port_heads(p)):
                    names += [edge(s, self.port_destination(layer, p, h), port) for s in srcs]
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

    @cached_property
    def destination_layers(self) -> Tensor:
        """``[edges]``: the layer of each edge's destination (``n_layers`` for the logits)."""
        layers = [self.n_layers if d == self.logits_index else parse_node(self.nodes[d]).layer
                  for _, d in self.edge_endpoints]
        return torch.tensor(layers, dtype=torch.long)

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
            coords += [(p, h, u) for p in range(3) for h in range(self.port_heads(p)) for u in range(n_src)]
            coords += [(-1, -1, u) for u in range(self.n_sources_mlp(layer))]
        return (*coords, *((-1, -1, u) for u in range(self.n_sources)))

    def edge_coordinates(self, index: int) -> tuple[int, int, int]:
        """(port, head, source) of a flat edge index within one position; port/head -1 off heads. ``head``
        indexes the port's destinations: a key/value head for k and v under grouped-query attention."""
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
            ports = []
            for p in range(3):
                size = self.port_heads(p) * n_src
                block = per_pos[..., start : start + size]
                ports.append(block.reshape(*block.shape[:-1], self.port_heads(p), n_src))
                start += size
            attn.append(tuple(ports))
            start = self._group_offsets[2 * layer + 1]
            mlp.append(per_pos[..., start : start + self.n_sources_mlp(layer)])
        logits = per_pos[..., self._group_offsets[-1] :]
        return MaskViews(tuple(attn), tuple(mlp), logits)


@dataclass(frozen=True)
class MaskViews:
    """One flat edge vector seen per hook group (shapes in the module docstring)."""

    attn: tuple[tuple[Tensor, Tensor, Tensor], ...]  # per layer, per port (q, k, v)
    mlp: tuple[Tensor, ...]
    logits: Tensor
