"""mechwork: a mechanistic-interpretability workbench on TransformerLens 4.x."""

from importlib.metadata import version as _version

from . import hooks, metrics
from .models import ModelNotAvailableError, load, zoo

__version__ = _version("mechwork")

__all__ = ["ModelNotAvailableError", "__version__", "hooks", "load", "metrics", "zoo"]
