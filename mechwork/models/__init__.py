"""Layer 1: loading models (hub, local checkpoints, the zoo) as TransformerLens bridges."""

from . import zoo
from ._loading import ModelNotAvailableError, load, resolve_spec, weights_hash

__all__ = ["ModelNotAvailableError", "load", "resolve_spec", "weights_hash", "zoo"]
