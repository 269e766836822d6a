"""Labelled results of patching sweeps (exact or attribution)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class PatchingResult:
    """``values[i, j, ...]`` is the metric after the patch at coordinates ``dims`` (e.g. layer, head).

    ``clean_value`` / ``corrupted_value`` are the metric on the unpatched clean and corrupted runs, so
    :meth:`normalized` maps "patched run looks corrupted" to 0 and "looks clean" to 1.
    """

    values: Tensor
    dims: tuple[str, ...]
    site: str
    metric: str
    direction: str
    clean_value: float
    corrupted_value: float
    method: str = "exact"
    position_labels: tuple[str, ...] | None = None
    normalization: str = "raw"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.dims):
            raise ValueError(f"values have {self.values.ndim} axes but dims name {len(self.dims)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def normalized(self) -> PatchingResult:
        """(value - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean behaviour."""
        if self.normalization != "raw":
            return self
        span = self.clean_value - self.corrupted_value
        if abs(span) < 1e-12:
            raise ZeroDivisionError("clean and corrupted runs score the same; nothing to normalise by")
        return replace(self, values=(self.values - self.corrupted_value) / span, normalization="normalized")

    def coords(self, flat_index: int) -> dict[str, int]:
        idx = torch.unravel_index(torch.tensor(flat_index), self.values.shape)
        return {d: int(i) for d, i in zip(self.dims, idx, strict=True)}

    def top(self, k: int = 5, *, by: str = "effect") -> list[tuple[dict[str, int], float]]:
        """The k entries with the largest effect, |value - baseline| (baseline: the unpatched run)."""
        baseline = self.corrupted_value if self.direction == "denoise" else self.clean_value
        if self.normalization == "normalized":
            baseline = 0.0 if self.direction == "denoise" else 1.0
        score = (self.values - baseline).abs() if by == "effect" else self.values
        order = score.flatten().argsort(descending=True)[:k]
        return [(self.coords(int(i)), float(self.values.flatten()[i])) for i in order]

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            "<tr><td>" + escape(", ".join(f"{k} {v}" for k, v in coords.items())) + f"</td><td>{value:.4g}</td></tr>"
            for coords, value in self.top(8)
        )
        norm = "normalised (0 = corrupted, 1 = clean)" if self.normalization == "normalized" else "raw"
        caption = escape(f"{self.method} patching of {self.site} ({self.direction}), {self.metric}, {norm}; "
                         f"shape {dict(zip(self.dims, self.shape, strict=True))}; largest effects")
        return f"<table><caption>{caption}</caption><tr><th>where</th><th>value</th></tr>{rows}</table>"

    def to_dict(self) -> dict:
        return {
            "values": self.values.tolist(),
            "dims": list(self.dims),
            "site": self.site,
            "metric": self.metric,
            "direction": self.direction,
            "method": self.method,
            "clean_value": self.clean_value,
            "corrupted_value": self.corrupted_value,
            "normalization": self.normalization,
            "position_labels": list(self.position_labels) if self.position_labels else None,
        }
