"""Atomic file writes, shared by every layer that saves results (caches, checkpoints, circuits, tables)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a hidden temporary file beside ``path``, then rename it into place, so an
    interrupted write never leaves a half-written file (the rename is atomic on one filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
