"""Saving figures: interactive HTML always; static PNG/SVG/PDF through kaleido and a Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

from .._io import atomic_write_text

STATIC_FORMATS = ("png", "svg", "pdf", "jpeg", "webp")
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


class StaticExportUnavailable(RuntimeError):
    """Static export needs kaleido and a Chromium/Chrome it can drive."""


def find_browser() -> str | None:
    """The Chromium kaleido should drive: $BROWSER_PATH if set, else the first one on $PATH."""
    if path := os.environ.get("BROWSER_PATH"):
        return path if Path(path).exists() else None
    return next((found for name in _BROWSERS if (found := shutil.which(name))), None)


def save_figure(fig: go.Figure, path: str | os.PathLike, *, scale: float = 2.0) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format (``.html`` is self-contained, plotly.js
    inlined, and needs nothing else; static formats need kaleido and Chromium, and say so when absent)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "html":
        return atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    if fmt not in STATIC_FORMATS:
        raise ValueError(f"{path}: unknown figure format {fmt!r}; use .html or one of {', '.join(STATIC_FORMATS)}")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise StaticExportUnavailable(
            f"cannot write {path}: static export needs kaleido (pip install kaleido); .html works without it"
        ) from None
    browser = find_browser()
    if browser is None:
        raise StaticExportUnavailable(
            f"cannot write {path}: static export drives a headless Chromium and none was found "
            "(install it, e.g. `apt-get install chromium`, or set BROWSER_PATH); .html works without it"
        )
    os.environ.setdefault("BROWSER_PATH", browser)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{fmt}")
    fig.write_image(str(tmp), format=fmt, scale=scale)
    os.replace(tmp, path)
    return path
