"""The ground-truth circuit of a compiled program, read off tracr's craft blocks.

Every RASP value tracr computes lives in residual directions of its own, and each craft block names
the directions it reads and writes. A head reads its query from ``w_qk``'s left space, its key from the
right space and its value from ``w_ov``'s input space, and writes ``w_ov``'s output space; an MLP reads
its first layer's input space and writes its second layer's output space; the embeddings write the
token, index and ``one`` directions; the unembedding reads the output space. A direction counts only
where the block's matrix actually uses it (a nonzero row or column). An edge ``SRC -> DST(.port)`` is in
the ground truth when SRC comes before DST in the model and writes a direction DST reads there.

One read is set apart. tracr gives every attention head a default: the query's ``one`` direction
paired with the key's ``tokens:BOS`` only, so that a query whose selector selects nothing attends to
BOS (and reads zero). An edge whose shared directions are only that query-side ``one`` acts only where
nothing is selected; it is a *structural* edge (kept out of ROC scoring, as the hand-set models'
position-only edges are), since a task read where the program's output is defined cannot see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...._nodes import INPUT, LOGITS, edge, edge_nodes, head_node, mlp_node
from .._types import CircuitGroundTruth
from ._compile import CompiledProgram


@dataclass(frozen=True)
class Component:
    """A node of the graph with the residual directions it writes and reads (per input port)."""

    name: str
    order: int  # position in the forward pass: a source must come strictly before its destination
    writes: frozenset[str]
    reads: dict[str | None, frozenset[str]]  # port ("q", "k", "v" for heads; None otherwise) -> directions
    computes: str = ""
    default_reads: dict[str | None, frozenset[str]] = field(default_factory=dict)  # only for attend-to-BOS


def _used(space, matrix: np.ndarray, axis: int) -> frozenset[str]:
    """The directions of ``space`` whose row (axis 1 summed) or column (axis 0) of ``matrix`` is nonzero."""
    mask = np.abs(np.asarray(matrix)).sum(axis=axis) > 0
    return frozenset(str(d) for d, used in zip(space.basis, mask, strict=True) if used)


def _names(space) -> str:
    """The RASP values a block writes: the names of its output directions."""
    return ", ".join(sorted({d.name for d in space.basis}))


def _bos_default_query(qk, bos: str) -> frozenset[str]:
    """``{"one"}`` when the query's ``one`` direction scores against the key's BOS direction and nothing else."""
    rows, cols = [str(d) for d in qk.left_space.basis], [str(d) for d in qk.right_space.basis]
    if "one" not in rows:
        return frozenset()
    used = {cols[j] for j in np.flatnonzero(np.asarray(qk.matrix)[rows.index("one")])}
    return frozenset({"one"}) if used == {f"tokens:{bos}"} else frozenset()


def components(compiled: CompiledProgram) -> list[Component]:
    """input, then each head and MLP tracr placed (attention before MLP within a layer), then logits."""
    params = compiled.assembled.params
    labels = compiled.residual_labels
    embedded = np.abs(np.asarray(params["token_embed"]["embeddings"])).sum(0) + np.abs(
        np.asarray(params["pos_embed"]["embeddings"])).sum(0)
    out = [Component(INPUT, 0, frozenset(lab for lab, v in zip(labels, embedded, strict=True) if v), {})]
    for placed in compiled.blocks:
        if placed.kind == "mlp":
            fst, snd = placed.block.fst, placed.block.snd
            out.append(Component(mlp_node(placed.layer), 2 * placed.layer + 2,
                                 _used(snd.output_space, snd.matrix, 0),
                                 {None: _used(fst.input_space, fst.matrix, 1)}, _names(snd.output_space)))
            continue
        for h, head in enumerate(placed.heads):
            qk, ov = head.w_qk, head.w_ov
            reads = {"q": _used(qk.left_space, qk.matrix, 1), "k": _used(qk.right_space, qk.matrix, 0),
                     "v": _used(ov.input_space, ov.matrix, 1)}
            out.append(Component(head_node(placed.layer, h), 2 * placed.layer + 1,
                                 _used(ov.output_space, ov.matrix, 0), reads, _names(ov.output_space),
                                 {"q": _bos_default_query(qk, compiled.program.bos)}))
    out.append(Component(LOGITS, 2 * compiled.n_layers + 1, frozenset(), {None: frozenset(compiled.output_labels)}))
    return out


def ground_truth(compiled: CompiledProgram) -> CircuitGroundTruth:
    parts = components(compiled)
    edges, structural = set(), set()
    for dst in parts:
        for port, reads in dst.reads.items():
            for src in parts:
                shared = src.writes & reads if src.order < dst.order else frozenset()
                if shared:
                    default_only = shared <= dst.default_reads.get(port, frozenset())
                    (structural if default_only else edges).add(edge(src.name, dst.name, port))
    nodes = {INPUT, LOGITS} | {n for e in edges | structural for n in edge_nodes(e)}
    notes = "; ".join(f"{p.name} computes {p.computes}" for p in parts if p.computes)
    return CircuitGroundTruth(nodes=frozenset(nodes), edges=frozenset(edges), structural_edges=frozenset(structural),
                              notes=f"compiled by tracr from {compiled.program.name}: {notes}")
