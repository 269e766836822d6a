"""Exact edge patching without re-running the destination layer: a block computed piece by piece.

Ablating u -> (layer L, head h, port p) changes only what reads that input: for a query edge head h, for
a key or value edge every query head reading that key/value head (one, or a group under grouped-query
attention). The layer's output changes only by those heads' results: ``resid_mid' = resid_mid +
result' - result``. We compute those heads from the clean layer's cached queries, keys and values, then
the layer's MLP and the blocks above. An MLP edge skips the layer's attention entirely. In the last layer,
and in the last block of every run, only the metric's query position is computed (nothing else reaches
the answer). Where the metric reads only a few logits (a logit difference reads two per prompt), only
those columns of the unembedding are computed: a third of a block per row at GPT-2's vocabulary and 16
positions. After a head edge, the layer's MLP input product comes from the changed heads' own products
(``_mlp_after_heads.py``: ``d_head`` instead of ``d_model`` multiply-adds per feature for one head).

The blocks are :class:`~._layer_pieces.LayerPieces`, read from the model's structure (GPT-2's dense MLP and
absolute positions, Llama's gated MLP, rotary positions and grouped-query attention). They are used where
that structure says they describe the model (``ModelStructure.layer_pieces``), and :func:`fast_exact_for`
checks them on every call against the clean run it is about to patch (a few rows; no cache): where they
differ, it warns, naming the model and the size of the difference, and the caller uses the bridge's blocks
instead.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..hooks._runner import _unembed, hook_flags, run_from, softcapped
from ..metrics import LogitDiff, PositionMetric
from ..models import SlowPathWarning, structure_of, warn_slow_path
from ._layer_pieces import ACTIVATIONS, LayerPieces, attend, row_chunks
from ._mlp_after_heads import MLPAfterHeads


@dataclass(frozen=True)
class _Readout:
    """The unembedding at the metric position: every column, or only those the metric reads (``columns``),
    with ``metric`` rewritten to index them."""

    metric: PositionMetric | None  # None: the caller scores every column with its own metric
    columns: Int[Tensor, " columns"] | None = None
    W_U: Tensor | None = None  # [d_model, columns]
    b_U: Tensor | None = None

    @classmethod
    def of(cls, model, metric: PositionMetric | None) -> _Readout:
        read = None if metric is None else _columns_read(metric)
        if read is None:
            return cls(metric)
        columns, narrowed = read
        columns = columns.to(model.W_U.device)
        return cls(narrowed, columns, model.W_U[:, columns].detach().contiguous(), model.b_U[columns].detach())

    def __call__(self, model, x: Float[Tensor, "rows 1 d_model"]) -> Float[Tensor, "rows vocab_or_columns"]:
        if self.columns is None:
            return _unembed(model, x)[:, 0]
        return softcapped(model, torch.addmm(self.b_U, model.ln_final(x)[:, 0], self.W_U))


def _columns_read(metric: PositionMetric) -> tuple[Tensor, PositionMetric] | None:
    """The vocabulary columns ``metric`` reads and the same metric over those columns alone; ``None`` for a
    metric that reads them all (a softmax, KL) or that mechwork does not know to read only a few."""
    if type(metric) is not LogitDiff:  # a subclass may read more than its answers and wrong tokens
        return None
    n = len(metric.answers)
    columns, index = torch.unique(torch.cat([metric.answers, metric.wrong]).cpu(), return_inverse=True)
    return columns, dataclasses.replace(metric, answers=index[:n], wrong=index[n:])


@dataclass
class _CleanLayer:
    q: Tensor  # [B, heads, T, dh], positions applied
    k: Tensor  # [B, kv_heads, T, dh]
    v: Tensor
    z: Tensor  # per-head output before W_O [B, heads, T, dh]
    resid_mid: Tensor  # [B, T, d]


class FastExact:
    """Metric inputs for chunks of edge ablations into one destination group, layer pieces cached.

    ``metric``: the task's metric; where it reads only a few logits, only those are computed and
    :attr:`metric` is the same metric over them: score the chunks' logits with it (``None``: score
    every column with the task's own)."""

    def __init__(self, model, resid_pre: list[Tensor], position: int, metric: PositionMetric | None = None,
                 pieces: LayerPieces | None = None):
        self.model, self.resid_pre = model, resid_pre
        self.pieces = pieces or LayerPieces(model)
        self.n_layers = self.pieces.n_layers
        self.position = position % resid_pre[0].shape[1]
        self.readout = _Readout.of(model, metric)
        self.metric = self.readout.metric
        self._layers: dict[int, _CleanLayer] = {}
        self._mlp_after: dict[int, MLPAfterHeads | None] = {}

    # ---- the clean layer, once per layer ---------------------------------------------------------
    def clean_layer(self, layer: int) -> _CleanLayer:
        if layer not in self._layers:
            pieces, x = self.pieces, self.resid_pre[layer]
            w = pieces.layers[layer]
            positions = torch.arange(x.shape[1], device=x.device)
            q, k, v = pieces.qkv(layer, x, positions)
            shared = {"dim": 1, "repeats": pieces.group}
            z = attend(q, k.repeat_interleave(**shared), v.repeat_interleave(**shared), w.divisor, positions)
            self._layers[layer] = _CleanLayer(q, k, v, z, x + pieces.write(layer, z))
        return self._layers[layer]

    def mlp_after_heads(self, layer: int) -> MLPAfterHeads | None:
        """The layer's :class:`MLPAfterHeads` (only the latest layer's is kept: exact visits layers in
        turn), or ``None`` where the MLP's norm cannot be read as its parts (said once, in a warning)."""
        if layer not in self._mlp_after:
            parts = self.pieces.ln2_parts(layer)
            self._mlp_after.clear()
            if isinstance(parts, str):
                warn_slow_path(self.model, "exact patching's MLP after a head edge",
                               f"{parts}; running the MLP's full input product (exact, slower)")
                self._mlp_after[layer] = None
            else:
                self._mlp_after[layer] = MLPAfterHeads.of(self.pieces, layer, parts,
                                                            self.clean_layer(layer).resid_mid)
        return self._mlp_after[layer]

    # ---- one chunk of edges ---------------------------------------------------------------------
    def head_edges(self, layer: int, ports: Tensor, heads: Tensor,
                   edits: Float[Tensor, "n batch pos d"]) -> Float[Tensor, "rows vocab"]:
        """Logits at the metric position with each row block's head input (q, k or v; k and v heads are
        key/value heads) reduced by its edit."""
        seq = edits.shape[2]
        last = layer == self.n_layers - 1
        queries = torch.tensor([self.position], device=edits.device) if last else torch.arange(seq, device=edits.device)
        normed = self.pieces.ln1(layer, self.resid_pre[layer].unsqueeze(0) - edits)  # [n, B, T, d]
        post = edits.new_empty(len(edits), edits.shape[1], len(queries), edits.shape[-1])
        for port in range(3):
            rows = (ports == port).nonzero().flatten()
            if len(rows):
                z_change = self._z_change(layer, port, heads[rows], normed[rows], queries)
                post[rows] = self._after_heads(layer, port, heads[rows], z_change, queries)
        return self._rest(layer + 1, post.flatten(0, 1))

    def _z_change(self, layer: int, port: int, heads: Tensor, normed: Float[Tensor, "r batch pos d"],
                  queries: Tensor) -> Float[Tensor, "r batch readers queries d_head"]:
        """How the outputs (before ``W_O``) of every query head reading row ``r``'s head ``heads[r]`` of
        ``port`` move when that head's input is ``normed[r]``: new minus clean."""
        pieces, clean = self.pieces, self.clean_layer(layer)
        w = pieces.layers[layer]

        def per_row(t: Tensor, index: Tensor) -> Tensor:  # [B, heads, ...] at [r, A] -> [r, B, A, ...]
            return t[:, index].transpose(0, 1)

        readers = self._readers(port, heads)
        if port == 0:  # one query head; it reads its key/value head's clean keys and values
            q = pieces.rotate(pieces.project(layer, 0, heads, normed[:, :, queries]), queries).unsqueeze(2)
            shared = heads // pieces.group
            k, v = per_row(clean.k, shared).unsqueeze(2), per_row(clean.v, shared).unsqueeze(2)
        else:  # one key/value head; every query head of its group reads it
            q = per_row(clean.q, readers)[..., queries, :]
            new = pieces.project(layer, port, heads, normed)
            if port == 1:
                new = pieces.rotate(new, torch.arange(normed.shape[2], device=normed.device))
            k = new if port == 1 else per_row(clean.k, heads)
            v = new if port == 2 else per_row(clean.v, heads)
            k, v = k.unsqueeze(2), v.unsqueeze(2)
        return attend(q, k, v, w.divisor, queries) - per_row(clean.z, readers)[..., queries, :]

    def _after_heads(self, layer: int, port: int, heads: Tensor, z_change: Float[Tensor, "r batch readers queries e"],
                     queries: Tensor) -> Float[Tensor, "r batch queries d"]:
        """The residual after the layer's MLP at ``queries`` when row ``r``'s readers' outputs move by
        ``z_change[r]``; the MLP's input product from the heads' own (:class:`MLPAfterHeads`) where that is
        cheaper."""
        readers = self._readers(port, heads)
        change = torch.einsum("rbaqe,raed->rbqd", z_change, self.pieces.layers[layer].W_O[readers])
        mid = self.clean_layer(layer).resid_mid[:, queries].unsqueeze(0) + change
        # in the last layer the MLP runs at the metric position alone: too few tokens per row for the
        # per-head products to pay for their own overhead
        after = None if layer == self.n_layers - 1 else self.mlp_after_heads(layer)
        if after is None or not after.worth_it(readers.shape[1]):
            return mid + self.pieces.mlp(layer, mid)
        z_change = z_change.transpose(2, 3).flatten(-2)  # [r, B, Q, readers * d_head]
        out = torch.empty_like(mid)
        for part in row_chunks(len(heads), mid.shape[1] * mid.shape[2], mid.device):
            hidden = mid.new_empty(*mid[part].shape[:-1], after.clean.shape[-1])
            # rows whose changes come from the same (consecutive) readers share one product; grouped on the
            # host once per chunk (one device sync, not one per group)
            same: dict[int, list[int]] = {}
            for row, first in enumerate(readers[part, 0].tolist()):
                same.setdefault(first, []).append(row)
            for first, members in same.items():
                rows = torch.tensor(members, device=mid.device)
                at = rows + part.start
                hidden[rows] = after.hidden(slice(first, first + readers.shape[1]), z_change[at], mid[at])
            out[part] = mid[part] + self.pieces.mlp_out(layer, hidden).view_as(mid[part])
        return out

    def _readers(self, port: int, heads: Tensor) -> Int[Tensor, "r readers"]:
        """The query heads whose results change with head ``heads[r]``'s ``port`` input."""
        if port == 0:
            return heads[:, None]
        group = self.pieces.group
        return heads[:, None] * group + torch.arange(group, device=heads.device)

    def mlp_edges(self, layer: int, edits: Float[Tensor, "n batch pos d"]) -> Float[Tensor, "rows vocab"]:
        """Logits at the metric position with each row block's MLP input reduced by its edit."""
        clean = self.clean_layer(layer)
        last = layer == self.n_layers - 1
        mid = clean.resid_mid.unsqueeze(0) - edits
        if last:
            mid = mid[:, :, [self.position]]
        out = self.pieces.mlp(layer, mid.flatten(0, 1))
        residual = (clean.resid_mid[:, [self.position]] if last else clean.resid_mid).unsqueeze(0)
        post = residual.expand(len(edits), -1, -1, -1).flatten(0, 1) + out
        return self._rest(layer + 1, post)

    def _rest(self, layer: int, x: Tensor) -> Tensor:
        """From the residual entering ``layer`` (or already only at the metric position when ``layer``
        is past the end): the blocks above, the last one only at the metric position."""
        if layer >= self.n_layers:  # the destination was the last layer: x is already [rows, 1, d]
            return self.readout(self.model, x)
        for above in range(layer, self.n_layers - 1):
            x = self.pieces.block(above, x)
        return self.readout(self.model, self.pieces.last_block_at(x, self.position))


def why_no_layer_pieces(model) -> str | None:
    """Why the layer pieces cannot describe ``model`` (``None``: they can, subject to the check against its
    clean logits)."""
    structure = structure_of(model)
    if not structure.layer_pieces:
        return f"they are not declared to describe {structure.architecture}'s blocks"
    if model.cfg.act_fn not in ACTIVATIONS:
        return f"its MLP activation {model.cfg.act_fn!r} is not one the pieces compute ({', '.join(ACTIVATIONS)})"
    config = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "its attention looks back only over a sliding window; the pieces attend to every earlier position"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "it rotates only part of each head's dimensions; the pieces rotate them all"
    return None


@torch.no_grad()
def fast_exact_for(model, resid_pre: list[Tensor], position: int, metric: PositionMetric | None = None, *,
                   check: bool = True, pieces: LayerPieces | None = None, user: str = "exact patching"
                   ) -> FastExact | None:
    """A :class:`FastExact` where the model's structure declares the layer pieces apply and they
    reproduce this clean run's logits; otherwise ``None`` (the caller reruns whole blocks), with a
    warning that says why. ``metric``: the task's (the logits it reads are the ones computed; ``None``:
    all of them). ``check=False``: the pieces already passed the check on another micro-batch of the
    same run. ``pieces``: the model's :class:`LayerPieces` when the caller keeps them between calls;
    ``user``: who uses them, for the warnings."""
    structure = structure_of(model)
    why = why_no_layer_pieces(model)
    if why is not None:
        warn_slow_path(model, f"{user}'s layer pieces",
                       f"{why}; rerunning each destination block through the bridge (exact, slower)")
        return None
    fast = FastExact(model, resid_pre, position, metric, pieces)
    if not check:
        return fast
    difference, tolerance = _difference_from_clean(model, fast, resid_pre)
    if difference > tolerance:
        warnings.warn(
            f"{getattr(model, 'mechwork_spec', structure.architecture)}: {user}'s layer pieces do not "
            f"reproduce this model's clean logits (max difference {difference:.3g} > {tolerance:.3g}); running "
            "the bridge's own blocks instead (exact, slower)", SlowPathWarning, stacklevel=3)
        return None
    return fast


def _difference_from_clean(model, fast: FastExact, resid_pre: list[Tensor]) -> tuple[float, float]:
    """With nothing ablated every piece must give the clean logits the bridge's blocks give (in the
    columns the pieces compute): the largest difference over the head and MLP pieces of the first and
    last layers (which run every block above them), and the tolerance for it."""
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False):
        reference = run_from(model, resid_pre[0], 0, position=fast.position)
    if fast.readout.columns is not None:
        reference = reference[:, fast.readout.columns]
    # rounding differs between the pieces and the bridge's fused modules: allow a few of the dtype's steps
    relative = max(1e-4, 4 * torch.finfo(reference.dtype).eps)
    tolerance = relative * float(reference.abs().max()) + 1e-6
    zero = torch.zeros_like(resid_pre[0]).unsqueeze(0)
    ports = torch.tensor([0, 1, 2], device=zero.device)
    heads = torch.zeros(3, dtype=torch.long, device=zero.device)
    runs = [fast.head_edges(layer, ports, heads, zero.expand(3, -1, -1, -1)) for layer in (0, fast.n_layers - 1)]
    runs += [fast.mlp_edges(layer, zero) for layer in (0, fast.n_layers - 1)]
    worst = max(float((block - reference).abs().max()) for run in runs for block in run.split(len(reference)))
    return worst, tolerance
