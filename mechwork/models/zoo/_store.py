"""Zoo checkpoints on disk: built on first use, cached, never half-written.

Layout: ``$MECHWORK_CACHE/zoo/<name>-v<version>-<recipe hash>/`` holding an ordinary Hugging Face
checkpoint (``config.json``, ``model.safetensors``, tokenizer files) plus ``mechwork.json`` with
the entry's build facts. A build goes to a temporary sibling folder that is renamed into place only
when complete, under a file lock so that concurrent processes build once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._registry import ZooEntry

METADATA_FILE = "mechwork.json"


def cache_root() -> Path:
    """``$MECHWORK_CACHE`` if set, else ``~/.cache/mechwork``."""
    env = os.environ.get("MECHWORK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mechwork"


def recipe_hash(entry: ZooEntry) -> str:
    blob = json.dumps({"recipe": entry.recipe, "version": entry.version}, sort_keys=True, default=str)
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            start = time.perf_counter()
            facts = entry.builder(tmp)
            meta: dict[str, Any] = {
                "name": entry.name,
                "version": entry.version,
                "recipe": entry.recipe,
                "kind": entry.kind,
                "build_seconds": round(time.perf_counter() - start, 2),
                "facts": facts,
            }
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
            if final.exists():  # a stale, incomplete folder from an older layout
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def build_facts(entry: ZooEntry) -> dict[str, Any]:
    meta = json.loads((ensure_built(entry) / METADATA_FILE).read_text())
    return meta.get("facts", {})
