"""Compiling a RASP program with tracr, keeping what the assembled model alone does not say.

``tracr.compiler.compiling.compile_rasp_to_model`` returns only the assembled model. We run the same
steps it runs (static validation, graph extraction, basis inference, craft components, craft model,
assembly), in the same order and with the same arguments (``causal=True``), so we also keep the craft
model: its blocks name the residual subspaces each head and MLP reads and writes, which is where the
ground truth comes from. Which transformer layer each craft block lands in is tracr's own assignment
(``assemble._get_model_config_and_module_names``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._program import TracrProgram, TracrProgramError

COMPILER_PAD = "compiler_pad"


@dataclass(frozen=True)
class PlacedBlock:
    """A craft block at its place in the compiled model: ``kind`` "attn" (``heads`` in head order) or "mlp"."""

    layer: int
    kind: str
    block: Any  # tracr.craft.transformers.MLP or MultiAttentionHead / AttentionHead
    heads: tuple[Any, ...] = ()


@dataclass(frozen=True)
class CompiledProgram:
    program: TracrProgram
    assembled: Any  # tracr.compiler.assemble.AssembledTransformerModel
    blocks: tuple[PlacedBlock, ...]
    residual_labels: tuple[str, ...]
    output_labels: tuple[str, ...]  # the output space's directions, in unembedding order
    output_values: tuple[Any, ...]  # categorical: the value of each output direction; numerical: ()
    categorical: bool

    @property
    def n_layers(self) -> int:
        return self.assembled.model_config.num_layers


@contextlib.contextmanager
def zero_initial_weights() -> Iterator[None]:
    """tracr's assembly initialises its haiku transformer at random (``VarianceScaling``, a truncated-normal
    draw that XLA compiles for every weight shape: about 80% of the time compiling a program takes here) and
    then zeroes every transformer weight and writes the craft weights in; the embeddings are matrices it
    passes in. Initialising with zeros instead gives the same parameters without that compiling (checked
    by a test against the random initialisation, and every compile is checked against RASP anyway).
    Process-wide while it lasts; nothing else in mechwork uses haiku."""
    import haiku as hk
    import jax.numpy as jnp

    initializer = hk.initializers.VarianceScaling
    original = initializer.__call__
    initializer.__call__ = lambda self, shape, dtype: jnp.zeros(shape, dtype)
    try:
        yield
    finally:
        initializer.__call__ = original


def compile_program(program: TracrProgram, check_outputs: Callable[[bool, tuple], Any] | None = None
                    ) -> CompiledProgram:
    """Compile with ``causal=True``; tracr's refusals become a :class:`TracrProgramError` naming the file.
    ``check_outputs(categorical, output_values)`` runs once tracr has inferred the output's values, before
    the (slow) craft model and assembly, so a program whose outputs cannot be written fails early."""
    try:
        return _compile(program, check_outputs)
    except TracrProgramError:
        raise
    except Exception as err:  # tracr signals unsupported programs with NotImplementedError, ValueError, ...
        raise TracrProgramError(f"{program.path}: tracr cannot compile this program: "
                                f"{type(err).__name__}: {err}") from err


def _compile(program: TracrProgram, check_outputs: Callable[[bool, tuple], Any] | None) -> CompiledProgram:
    from tracr.compiler import (
        assemble,
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        nodes,
        rasp_to_graph,
        validating,
    )
    from tracr.craft import bases, transformers
    from tracr.rasp import rasp

    unsupported = validating.static_validate(program.expr)
    if unsupported:
        reasons = "; ".join(f"{u.expr.name}: {u.reason}" for u in unsupported)
        raise TracrProgramError(f"{program.path}: tracr does not support these RASP expressions: {reasons}")
    extracted = rasp_to_graph.extract_rasp_graph(program.expr)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(program.vocab), program.max_seq_len)
    categorical = rasp.is_categorical(sink[nodes.EXPR])
    out_basis = bases.VectorSpaceWithBasis(sink[nodes.OUTPUT_BASIS]).basis  # the order tracr unembeds in
    output_values = tuple(d.value for d in out_basis) if categorical else ()
    if check_outputs is not None:
        check_outputs(categorical, output_values)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, program.bos), mlp_exactness=100)
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    with zero_initial_weights():
        assembled = craft_model_to_transformer.craft_model_to_transformer(
            craft_model=craft_model, graph=graph, sink=sink, max_seq_len=program.max_seq_len, causal=True,
            compiler_bos=program.bos, compiler_pad=COMPILER_PAD)
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    placed = []
    for name, block in zip(module_names, craft_model.blocks, strict=True):
        layer = int(name.split("/")[1].removeprefix("layer_"))
        if isinstance(block, transformers.MLP):
            placed.append(PlacedBlock(layer, "mlp", block))
        else:
            placed.append(PlacedBlock(layer, "attn", block, tuple(block.as_multi().heads())))
    return CompiledProgram(
        program=program, assembled=assembled, blocks=tuple(placed),
        residual_labels=tuple(assembled.residual_labels),
        output_labels=tuple(str(d) for d in out_basis),
        output_values=output_values,
        categorical=categorical,
    )

