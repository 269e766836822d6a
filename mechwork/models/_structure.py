"""One description of a booted model's block structure, read by the graph, the engine and the hooks.

Model families differ in how a block is wired (sequential or parallel attention and MLP), which norm
they use, how many key/value heads serve the query heads, what kind of MLP they have and how
positions enter. Every layer above the models layer reads this description instead of assuming
GPT-2, and every decision it drives (which edges exist, whether a fast path applies) is made here
once, from the bridge's config, with the reason recorded when something is not supported.

The description is derived from ``model.cfg`` (TransformerLens's config for the booted bridge) and
the bridge's own modules. One fact cannot be read off them: whether ``blocks.L.hook_mlp_in`` reaches
the MLP (TransformerLens wires it as a pre-hook on ``ln2``, which shared-norm parallel blocks lack,
and Bloom's block forward never installs it). That is probed once per model, with one one-token
forward, and kept on the model (``mechwork.load`` primes it before returning).
Each fact here is checked per family against the Hugging Face config in ``tests/integration/test_families.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum

import torch

from ._edge_access import Access, EdgeAccess, probe_edge_access


class BlockLayout(Enum):
    SEQUENTIAL = "sequential"  # resid_mid = resid_pre + attn(ln1(resid_pre)); MLP reads resid_mid
    PARALLEL = "parallel"  # attention and MLP both read the block input (GPT-J, GPT-NeoX, Phi, Falcon)


class NormKind(Enum):
    LAYERNORM = "layernorm"
    RMSNORM = "rmsnorm"
    NONE = "none"


class MLPKind(Enum):
    DENSE = "dense"
    GATED = "gated"
    MIXTURE_OF_EXPERTS = "mixture-of-experts"
    NONE = "none"  # attention-only model


class PositionKind(Enum):
    ABSOLUTE = "absolute"  # learned or sinusoidal embeddings added to the residual stream at the input
    ROTARY = "rotary"
    ALIBI = "alibi"
    OTHER = "other"


class UnsupportedModelError(ValueError):
    """A model whose structure a mechwork capability cannot handle exactly (names what is missing)."""


# Families whose bridge blocks have been checked (by tests on tiny random checkpoints) to run one by
# one from a residual stream with no other per-call input, exactly as the bridge's own forward.
_RESUMABLE_ARCHITECTURES = frozenset({"GPT2LMHeadModel"})
# Families whose blocks exact patching and ACDC may compute piece by piece from the weights
# (``discovery/_layer_pieces.py``): pre-norm sequential blocks, causal softmax over every earlier position,
# a dense or gated MLP, absolute or Llama-style rotary positions (whole head dimension), grouped-query
# attention; no norm inside attention (Qwen 3's q/k norms, Gemma 2/3 and OLMo 2's output norms) and no
# score softcap. Each use is still checked against the bridge's clean logits.
_LAYER_PIECE_ARCHITECTURES = frozenset({"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM",
                                        "Qwen2ForCausalLM", "GemmaForCausalLM"})
# Families whose bridge does not resume at block ``l`` on ``forward(resid, start_at_layer=l)``: it runs every
# block on ``resid`` taken as input embeddings (TransformerLens 4.3: ``BloomBlockBridge.forward`` never calls
# the block's ``_maybe_inject_start_residual``), so resuming there gives wrong logits.
_START_AT_LAYER_IGNORED = frozenset({"BloomForCausalLM"})


@dataclass(frozen=True)
class ModelStructure:
    """How a model's blocks are wired; ``architecture`` is the Hugging Face class name."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    layout: BlockLayout
    norm: NormKind
    mlp: MLPKind
    positions: PositionKind
    head_result_hook: bool  # the bridge can give blocks.{l}.attn.hook_result (each head's residual write)
    # The bridge can give each head its own copy of its input (blocks.{l}.hook_{q,k,v}_input, pre-norm;
    # with grouped-query attention k and v are per key/value head: [batch, pos, n_kv_heads, d_model]).
    head_input_hooks: bool = True
    mlp_input_hook: bool = True  # blocks.{l}.hook_mlp_in fires and feeds the MLP (and only the MLP)
    # a norm on the summed attention output before the residual add (Gemma 2/3, OLMo 2): the layer writes
    # norm(sum_h result_h + b_O), so its heads' writes are not additive (hooks/_head_writes.py)
    attn_out_norm: bool = False
    # logits = cap * tanh(unembed / cap) (Gemma 2): applied by Hugging Face after the unembedding, so anything
    # that unembeds a residual itself must apply it too
    final_logit_softcap: float | None = None
    # How the edge graph reaches head outputs, head inputs and MLP inputs: the bridge's hooks above, or
    # computed by mechwork where they are missing (models/_edge_access.py, checked on the model).
    edge_access: EdgeAccess = EdgeAccess(Access.BRIDGE, Access.BRIDGE, Access.BRIDGE)

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def resumable_blocks(self) -> bool:
        """Can mechwork drive ``blocks[l:]`` by hand from the residual entering block ``l``?"""
        return self.architecture in _RESUMABLE_ARCHITECTURES

    @property
    def start_at_layer_exact(self) -> bool:
        """Does the bridge's ``forward(resid, start_at_layer=l)`` resume from ``resid`` (rather than ignore it)?"""
        return self.architecture not in _START_AT_LAYER_IGNORED

    @property
    def layer_pieces(self) -> bool:
        """Do the layer pieces exact patching and ACDC compute (``discovery/_layer_pieces.py``) describe this
        model's blocks?"""
        return self.architecture in _LAYER_PIECE_ARCHITECTURES

    def edge_graph_gaps(self) -> list[str]:
        """What the edge graph and patch-mask engine lack for this structure (empty: supported)."""
        # Grouped-query attention: k/v destinations are the key/value heads (graph/_graph.py). A
        # mixture-of-experts MLP is one node: its router and experts all read hook_mlp_in.
        # A norm on the heads' summed output (Gemma 2/3, OLMo 2): edges from those heads reach their
        # destinations through it (hooks/_head_writes.py).
        gaps = []
        access, why = self.edge_access, f": {self.edge_access.why}" if self.edge_access.why else ""
        if access.head_outputs is Access.NONE:
            gaps.append("no per-head result hook (blocks.L.attn.hook_result) on the bridge, and hook_z times "
                        f"W_O does not reproduce the attention output{why}")
        if access.head_inputs is Access.NONE:
            gaps.append("no per-head q/k/v input hooks (blocks.L.hook_{q,k,v}_input) on the bridge, and ln1 "
                        f"then W_Q/W_K/W_V does not reproduce blocks.L.attn.hook_q/k/v{why}")
        if self.mlp is not MLPKind.NONE and access.mlp_inputs is Access.NONE:
            gaps.append("no MLP-input hook on the bridge (blocks.L.hook_mlp_in never reaches the MLP)"
                        + ("" if self.layout is BlockLayout.PARALLEL else
                           ", and in a sequential block mechwork does not rebuild the MLP's input"))
        # A bridge whose start_at_layer does not resume (Bloom) is resumed by mechwork's runner instead
        # (hooks/_runner.py resumed_hooks).
        return gaps

    def require_edge_graph(self) -> None:
        """Refuse, naming the architecture and what is missing, rather than give a wrong graph."""
        gaps = self.edge_graph_gaps()
        if gaps:
            raise UnsupportedModelError(
                f"{self.architecture}: mechwork's edge graph does not support this model yet: it has "
                + "; ".join(gaps) + ". Caching and activation patching work; edge-level circuit discovery does not."
            )

    def describe(self) -> str:
        return (f"{self.architecture}: {self.n_layers} layers, {self.n_heads} heads "
                f"({self.n_kv_heads} key/value), {self.layout.value} blocks, {self.norm.value} norm, "
                f"{self.mlp.value} MLP, {self.positions.value} positions")


def structure_of(model) -> ModelStructure:
    """The block structure of a booted ``TransformerBridge`` (or anything with a TransformerLens ``cfg``)."""
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    kv = getattr(cfg, "n_key_value_heads", None)
    blocks = list(getattr(model, "blocks", None) or [])
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False)) or any(
        type(b).__name__ == "ParallelBlockBridge" for b in blocks)
    result_hook, input_hooks = _attention_supports(blocks, "result"), _attention_supports(blocks, "split_qkv")
    mlp = _mlp_kind(cfg)
    mlp_in_fires = _mlp_input_hook_fires(model)
    shares_norm = parallel and bool(blocks) and all(getattr(b, "ln2", None) is None for b in blocks)
    access = probe_edge_access(model, result_hook=result_hook, input_hooks=input_hooks, mlp_in_fires=mlp_in_fires,
                               shares_norm=shares_norm, has_mlp=mlp is not MLPKind.NONE,
                               parallel=parallel) if blocks else EdgeAccess(
        Access.NONE, Access.NONE, Access.NONE, "the model has no blocks")
    return ModelStructure(
        architecture=str(getattr(cfg, "architecture", None) or type(model).__name__),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(kv) if kv else n_heads,
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        layout=BlockLayout.PARALLEL if parallel else BlockLayout.SEQUENTIAL,
        norm=_norm_kind(getattr(cfg, "normalization_type", None), getattr(cfg, "uses_rms_norm", False)),
        mlp=mlp,
        positions=_position_kind(str(getattr(cfg, "positional_embedding_type", "standard"))),
        head_result_hook=result_hook,
        head_input_hooks=input_hooks,
        mlp_input_hook=mlp_in_fires,
        attn_out_norm=bool(blocks) and all("ln1_post" in (getattr(b, "submodules", None) or {}) for b in blocks),
        edge_access=access,
        final_logit_softcap=_positive(getattr(cfg, "output_logits_soft_cap", None)),
    )


def warn_slow_path(model, what: str, why: str) -> None:
    """Say once per model and capability that a fast path does not apply (never fall back in silence)."""
    said = model.__dict__.setdefault("_mechwork_slow_paths", set())
    if what in said:
        return
    said.add(what)
    spec = getattr(model, "mechwork_spec", None) or structure_of(model).architecture
    warnings.warn(f"{spec}: {what}: {why}", SlowPathWarning, stacklevel=3)


class SlowPathWarning(UserWarning):
    """A fast path does not apply to this model; mechwork uses a slower exact one instead."""


def _positive(value) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


def _norm_kind(normalization_type, uses_rms: bool) -> NormKind:
    kind = str(normalization_type or "").upper()
    if uses_rms or kind.startswith("RMS"):
        return NormKind.RMSNORM
    if kind.startswith("LN"):
        return NormKind.LAYERNORM
    return NormKind.NONE


def _mlp_kind(cfg) -> MLPKind:
    if getattr(cfg, "attn_only", False):
        return MLPKind.NONE
    if getattr(cfg, "num_experts", None):
        return MLPKind.MIXTURE_OF_EXPERTS
    return MLPKind.GATED if getattr(cfg, "gated_mlp", False) else MLPKind.DENSE


def _position_kind(name: str) -> PositionKind:
    return {"standard": PositionKind.ABSOLUTE, "shortformer": PositionKind.ABSOLUTE,
            "rotary": PositionKind.ROTARY, "alibi": PositionKind.ALIBI}.get(name, PositionKind.OTHER)


def _attention_supports(blocks, what: str) -> bool:
    """The bridge's own test (``_validate_attention_fork_supported``) for per-head results / q/k/v input copies."""
    if not blocks:
        return False
    if what == "result":
        return all(bool(getattr(getattr(b, "attn", None), "supports_attn_result", False)) for b in blocks)
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    forks = (JointQKVAttentionBridge, PositionEmbeddingsAttentionBridge)
    return all(isinstance(getattr(b, "attn", None), forks) for b in blocks)


_MLP_IN_PROBE = "_mechwork_mlp_in_fires"


def _mlp_input_hook_fires(model) -> bool:
    """Does every block's ``hook_mlp_in`` fire in a forward pass? Probed once (one token) and kept on the model.

    Run it before attaching hooks of your own: the probe's forward would fire them (``mechwork.load`` runs
    it while the model is fresh).
    """
    known = model.__dict__.get(_MLP_IN_PROBE)
    if known is not None:
        return known
    blocks = list(getattr(model, "blocks", None) or [])
    if not blocks or not hasattr(model, "set_use_hook_mlp_in") or not all(hasattr(b, "hook_mlp_in") for b in blocks):
        model.__dict__[_MLP_IN_PROBE] = False
        return False
    fired: set[int] = set()
    handles = [b.hook_mlp_in.register_forward_hook(lambda *_, i=i: fired.add(i)) for i, b in enumerate(blocks)]
    was_on = bool(getattr(model.cfg, "use_hook_mlp_in", False))
    try:
        model.set_use_hook_mlp_in(True)
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 1, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.set_use_hook_mlp_in(was_on)
    model.__dict__[_MLP_IN_PROBE] = fires = len(fired) == len(blocks)
    return fires
