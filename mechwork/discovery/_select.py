"""From edge scores to a circuit: top-n, threshold, or greedy growth connected to the logits."""

from __future__ import annotations

import torch

from ._types import EdgeScores


def top_n(scores: EdgeScores, n: int) -> frozenset[str]:
    """The ``n`` most important edges (ties broken by graph order)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order = torch.argsort(scores.importance(), descending=True, stable=True)[:n]
    return frozenset(scores.graph.edges[i] for i in order.tolist())


def threshold(scores: EdgeScores, tau: float) -> frozenset[str]:
    """Every edge whose importance is at least ``tau``."""
    keep = torch.nonzero(scores.importance() >= tau).flatten().tolist()
    return frozenset(scores.graph.edges[i] for i in keep)


def greedy(scores: EdgeScores, n: int) -> frozenset[str]:
    """Grow a circuit from the logits: repeatedly add the most important edge whose destination is
    already in the circuit, until it has ``n`` edges (or no candidate is left). Every edge chosen
    this way lies on a path to the logits."""
    graph = scores.graph
    importance = scores.importance().tolist()
    logits_node = graph.logits_index
    reached = {logits_node}
    chosen: list[int] = []
    taken = [False] * graph.n_edges
    by_dst: dict[int, list[int]] = {}
    for i, (_, dst) in enumerate(graph.edge_endpoints):
        by_dst.setdefault(dst, []).append(i)
    frontier = sorted(by_dst.get(logits_node, []), key=lambda i: -importance[i])
    while len(chosen) < n and frontier:
        best = max(frontier, key=lambda i: importance[i])
        frontier.remove(best)
        if taken[best]:
            continue
        taken[best] = True
        chosen.append(best)
        src = graph.edge_endpoints[best][0]
        if src not in reached:
            reached.add(src)
            frontier += [i for d in graph.destinations_of(src) for i in by_dst.get(d, []) if not taken[i]]
    return frozenset(graph.edges[i] for i in chosen)


SELECTORS = {"top-n": top_n, "threshold": threshold, "greedy": greedy}


def select(scores: EdgeScores, how: str, value: float) -> frozenset[str]:
    if how not in SELECTORS:
        raise ValueError(f"unknown circuit selection {how!r}; choose one of {', '.join(SELECTORS)}")
    return SELECTORS[how](scores, value if how == "threshold" else int(value))
