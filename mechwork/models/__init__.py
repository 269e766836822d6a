"""Layer 1: loading models (hub, local checkpoints, the zoo) as TransformerLens bridges."""

from . import zoo
from ._loading import ModelNotAvailableError, load, resolve_spec, weights_hash
from ._structure import (
    BlockLayout,
    MLPKind,
    ModelStructure,
    NormKind,
    PositionKind,
    SlowPathWarning,
    UnsupportedModelError,
    structure_of,
    warn_slow_path,
)

__all__ = [
    "BlockLayout", "MLPKind", "ModelNotAvailableError", "ModelStructure", "NormKind", "PositionKind",
    "SlowPathWarning", "UnsupportedModelError", "load", "resolve_spec", "structure_of", "warn_slow_path",
    "weights_hash", "zoo",
]
