"""A pre-norm read as its parts: ``norm(x) = weight * centre(x) * scale(x) + bias``.

``centre(x)`` is ``x - mean(x)`` for a LayerNorm and ``x`` for an RMSNorm; ``scale(x) = 1 / sqrt(mean(
centre(x)^2) + eps)`` is one number per row. Written this way, a linear map after the norm is linear in
``centre(x)`` up to that one number, so a caller that knows ``W centre(x)`` for a clean ``x`` and how ``x``
moved can get ``W norm(x')`` without the full product (``discovery/_exact_fast.py`` does, for a layer's
MLP after a few heads changed).

The parts are read from the model's own module by probing it (so Gemma's ``1 + weight`` and any other
parametrisation come out as the weight it multiplies by), then checked against the module on random rows
of several sizes; a module they do not reproduce gets a reason instead of parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ._structure import NormKind


@dataclass(frozen=True)
class NormParts:
    centred: bool  # LayerNorm: subtracts the row mean; RMSNorm: does not
    eps: float
    weight: Float[Tensor, " d"]
    bias: Float[Tensor, " d"]

    def centre(self, x: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows d"]:
        if not self.centred:
            return x
        wide = x.float()  # statistics in float32, as Hugging Face's norms take them
        return (wide - wide.mean(-1, keepdim=True)).to(x.dtype)

    def scale(self, x: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows 1"]:
        """``1 / sqrt(mean(centre(x)^2) + eps)``, one per row, taken in float32 (a half-precision square
        overflows at residual norms in the hundreds) and returned in ``x``'s dtype."""
        wide = self.centre(x.float())
        return torch.rsqrt(wide.square().mean(-1, keepdim=True) + self.eps).to(x.dtype)

    def __call__(self, x: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows d"]:
        return self.centre(x) * self.scale(x) * self.weight + self.bias


def _eps(module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


@torch.no_grad()
def norm_parts(module, kind: NormKind, d_model: int, like: Tensor) -> NormParts | str:
    """The parts of the norm ``module`` of ``kind`` over ``d_model`` features (in ``like``'s dtype and device),
    or why they cannot be read."""
    eps = _eps(module)
    if eps is None:
        return f"{type(module).__name__} names no epsilon (eps / variance_epsilon)"
    centred = kind is NormKind.LAYERNORM
    zeros = like.new_zeros(1, d_model)
    bias = module(zeros)[0]  # centre(0) = 0: the norm of zeros is its bias
    # +-1 alternating: centre(x) = x (up to 1/d for odd d), every feature far from zero
    probe = torch.ones(1, d_model, dtype=like.dtype, device=like.device)
    probe[:, 1::2] = -1
    shape = NormParts(centred, eps, torch.ones_like(bias), torch.zeros_like(bias))
    weight = (module(probe)[0] - bias) / (shape.centre(probe) * shape.scale(probe))[0]
    parts = NormParts(centred, eps, weight, bias)
    generator = torch.Generator(device="cpu").manual_seed(0)
    sizes = torch.tensor([1e-2, 1, 1, 10, 100, 1e3])[:, None]
    rows = (torch.randn(6, d_model, generator=generator) * sizes).to(like)
    rows[2] += 3.0  # a row with a large mean
    expected = module(rows)
    difference = float((parts(rows) - expected).abs().max())
    tolerance = 8 * torch.finfo(like.dtype).eps * float(expected.abs().max()) + 1e-6
    if not difference <= tolerance:
        return (f"{type(module).__name__} is not weight * centre(x) / sqrt(mean(centre(x)^2) + eps) + bias "
                f"as a {kind.value} (difference {difference:.3g} on random rows)")
    return parts
