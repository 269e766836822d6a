"""Layer 2: activation caching, ablation and patching on TransformerLens hook points."""

from ._ablation import AblationKind, AblationPlan, AblationTarget, compile_ablation, run_with_ablation
from ._attribution import attribution_patching
from ._cache import ShardedActivations, cache_activations, load_activations, stream_activations
from ._patching import PatchPlan, PatchSpec, activation_patching, compile_plan
from ._path import path_patching, path_patching_sweep
from ._result import PatchingResult
from ._runner import hooked, run_from
from ._selectors import HookSelector, UnknownHookError, hook_names, resolve_hook
from ._sites import Site
from ._validation import InputError

__all__ = [
    "AblationKind",
    "AblationPlan",
    "AblationTarget",
    "attribution_patching",
    "compile_ablation",
    "path_patching",
    "path_patching_sweep",
    "run_with_ablation",
    "HookSelector",
    "InputError",
    "PatchPlan",
    "PatchSpec",
    "PatchingResult",
    "ShardedActivations",
    "Site",
    "UnknownHookError",
    "activation_patching",
    "cache_activations",
    "compile_plan",
    "hook_names",
    "hooked",
    "load_activations",
    "resolve_hook",
    "run_from",
    "stream_activations",
]
