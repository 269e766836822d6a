"""Atomic file writes and checked JSON reads, shared by every layer that saves or loads results
(caches, checkpoints, circuits, tables, experiment records, challenge packs)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a hidden temporary file beside ``path``, then rename it into place, so an
    interrupted write never leaves a half-written file (the rename is atomic on one filesystem)."""
    return atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh hidden sibling of ``final`` to fill; on success it replaces ``final`` (any old folder
    there is removed), on any exception it is deleted: ``final`` is never left half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` written to a temporary file beside ``path``, then renamed into place (see
    :func:`atomic_write_text`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, data, *, indent: int | None = 1, **dumps) -> Path:
    """``data`` as JSON, written with :func:`atomic_write_text`."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps))


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A header row and ``rows`` as CSV, written with :func:`atomic_write_text`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike, error: type[Exception], missing: str):
    """Parse a JSON file; a missing file raises ``error(missing)``, malformed JSON ``error`` naming the
    file, line and column."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(missing) from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
