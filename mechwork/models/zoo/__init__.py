"""The zoo: small models with planted, known mechanisms, stored as Hugging Face checkpoints."""

from ..._nodes import edge, edge_nodes, head_node, mlp_node
from . import induction, induction_llama, lookup
from ._registry import UnknownZooModelError, ZooEntry, entries, get_entry, register
from ._store import build_facts, cache_root, checkpoint_dir, ensure_built, is_built
from ._types import (
    CircuitGroundTruth,
    GroundTruth,
    LabellingGroundTruth,
    Task,
    TaskData,
    TriggerGroundTruth,
)
from ._writer import constructed_builder


def _register_builtins() -> None:
    for module, summary in (
        (induction, "previous-token head + induction head (K-composition), with distractor heads"),
        (lookup, "mover head + lookup-table MLP, with distractor heads and MLP"),
        (induction_llama, "induction in a Llama model: rotary previous-token head + induction head sharing "
                          "key/value heads (GQA), RMSNorm, with distractor heads"),
    ):
        register(
            ZooEntry(
                name=module.TASK.name,
                summary=summary,
                kind="constructed",
                builder=constructed_builder(module.build),
                task=module.TASK,
                ground_truth=lambda m=module: m.GROUND_TRUTH,
                recipe={"module": module.__name__},
            )
        )
    from . import pairs, trojan
    from ._tracr._zoo import tracr_entries

    register(pairs.ENTRY)
    register(trojan.ENTRY)
    for entry in tracr_entries():  # RASP programs compiled by tracr (tracr is needed only to build them)
        register(entry)


_register_builtins()

__all__ = [
    "CircuitGroundTruth",
    "GroundTruth",
    "LabellingGroundTruth",
    "Task",
    "TaskData",
    "TriggerGroundTruth",
    "UnknownZooModelError",
    "ZooEntry",
    "build_facts",
    "cache_root",
    "checkpoint_dir",
    "edge",
    "edge_nodes",
    "ensure_built",
    "entries",
    "get_entry",
    "head_node",
    "is_built",
    "mlp_node",
    "register",
]
