"""Zoo checkpoints on disk: built on first use, cached, never half-written.

Layout: ``$MECHWORK_CACHE/zoo/<name>-v<version>-<build hash>/`` holding an ordinary Hugging Face
checkpoint (``config.json``, ``model.safetensors``, tokenizer files) plus ``mechwork.json`` with
the entry's build facts. The build hash covers the recipe, the version and the source code that
builds the weights (the builder's module and the zoo's shared construction modules), so editing an
entry's code rebuilds it instead of serving stale weights. A build goes to a temporary sibling
folder that is renamed into place only when complete, under a file lock so that concurrent
processes build once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..._io import atomic_directory
from ._registry import ZooEntry

METADATA_FILE = "mechwork.json"


def cache_root() -> Path:
    """``$MECHWORK_CACHE`` if set, else ``~/.cache/mechwork``."""
    env = os.environ.get("MECHWORK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mechwork"


# Modules every built-in builder may call into: a change in any of them may change the weights.
_SHARED_BUILD_MODULES = ("mechwork.models.zoo._construct", "mechwork.models.zoo._training",
                         "mechwork.models.zoo._writer", "mechwork.models._tokenizer")


def builder_source_hash(entry: ZooEntry) -> str:
    """SHA-256 over the source of the module that defines the entry's builder, the mechwork modules it
    draws names from (transitively: ``induction_llama`` reuses ``induction``'s constants), and the
    shared build modules."""
    digest = hashlib.sha256()
    digest.update(_source_of_builder(entry.builder))
    for name in sorted(_build_dependencies(entry.builder) | set(_SHARED_BUILD_MODULES)):
        __import__(name)
        digest.update(f"{name}\n{inspect.getsource(sys.modules[name])}\n".encode())
    return digest.hexdigest()


def _build_dependencies(builder) -> set[str]:
    """mechwork.models modules reachable from the builder's module through the names each one imports."""
    seen: set[str] = set()
    todo = [builder.__module__]
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        if name in seen or module is None or not name.startswith("mechwork.models"):
            continue
        seen.add(name)
        for value in vars(module).values():
            source = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(source, str) and source not in seen:
                todo.append(source)
    return seen


def _source_of_builder(builder) -> bytes:
    """The builder's whole module where it has a source file; a builder typed at a prompt has none, so
    its own code object (bytecode and constants) stands in for it."""
    module = sys.modules.get(builder.__module__)
    try:
        return inspect.getsource(module if module is not None else builder).encode()
    except (OSError, TypeError):
        code = builder.__code__
        return code.co_code + repr(code.co_consts).encode()


def recipe_hash(entry: ZooEntry) -> str:
    blob = json.dumps({"recipe": entry.recipe, "version": entry.version, "source": builder_source_hash(entry)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def checkpoint_dir(entry: ZooEntry) -> Path:
    return cache_root() / "zoo" / f"{entry.name}-v{entry.version}-{recipe_hash(entry)}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_built(entry: ZooEntry) -> bool:
    return (checkpoint_dir(entry) / METADATA_FILE).is_file()


def ensure_built(entry: ZooEntry, *, verbose: bool = False) -> Path:
    """Return the entry's checkpoint folder, building it first if it is not cached."""
    final = checkpoint_dir(entry)
    if (final / METADATA_FILE).is_file():
        return final
    with _lock(final.with_name(final.name + ".lock")):
        if (final / METADATA_FILE).is_file():  # another process built it while we waited
            return final
        if verbose:
            print(f"building zoo:{entry.name} into {final} ...", flush=True)
        with atomic_directory(final) as tmp:  # replaces a stale, incomplete folder from an older layout
            start = time.perf_counter()
            facts = entry.builder(tmp)
            meta: dict[str, Any] = {
                "name": entry.name,
                "version": entry.version,
                "recipe": entry.recipe,
                "source_sha256": builder_source_hash(entry),
                "kind": entry.kind,
                "build_seconds": round(time.perf_counter() - start, 2),
                "facts": facts,
            }
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return final


def build_facts(entry: ZooEntry) -> dict[str, Any]:
    meta = json.loads((ensure_built(entry) / METADATA_FILE).read_text())
    return meta.get("facts", {})
