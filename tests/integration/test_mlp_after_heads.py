"""Exact patching's MLP after a head edge from the heads' own products (``discovery/_mlp_after_heads.py``)
and the norm read as its parts (``models/_norm_parts.py``), against the MLP run on the changed row through
the model's own norm module, on every family the layer pieces describe. Broken variants are caught: the
row mean left out of a LayerNorm's product, the norm's weight left out of the heads' products."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mechwork
from mechwork.discovery import DiscoveryTask, discover
from mechwork.discovery._exact_fast import fast_exact_for
from mechwork.discovery._layer_pieces import LayerPieces
from mechwork.graph import Graph, clean_start
from mechwork.hooks._runner import embed
from mechwork.models import NormKind, SlowPathWarning
from mechwork.models._norm_parts import norm_parts
from tests.families import prompts, tiny_family
from tests.integration.test_method_values import _checked

pytestmark = pytest.mark.filterwarnings("ignore:.*resuming the forward pass:mechwork.models.SlowPathWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _fast(model):
    clean, _ = prompts(batch=3, pos=7)
    with torch.no_grad():
        start = clean_start(model, Graph.from_model(model), embed(model, clean))
    return fast_exact_for(model, start.resid_pre, -1)


def _unweighted(after, pieces: LayerPieces, layer: int):
    """Broken: the heads' products without the norm's weight."""
    w = pieces.layers[layer]
    return dataclasses.replace(after, per_head=after.norm.centre(w.W_O).flatten(0, 1) @ w.W_mlp_in)


def _uncentred(after, pieces: LayerPieces, layer: int):
    """Broken: the heads' products without the LayerNorm's row mean taken out."""
    w = pieces.layers[layer]
    return dataclasses.replace(after, per_head=w.W_O.flatten(0, 1) @ (after.norm.weight[:, None] * w.W_mlp_in))


BROKEN = {"row mean left out": _uncentred, "norm weight left out of the heads' products": _unweighted}


@pytest.mark.parametrize(("name", "variant"), [(n, "as is") for n in ("gpt2", "llama", "qwen2", "gemma")]
                         + [("gpt2", "row mean left out"), ("llama", "norm weight left out of the heads' products")])
def test_mlp_after_heads_equals_the_mlp_on_the_changed_row(root, name, variant):
    model = tiny_family(name, root).model
    fast = _fast(model)
    pieces, layer = fast.pieces, 1
    after = fast.mlp_after_heads(layer)
    assert after is not None
    if variant in BROKEN:
        after = BROKEN[variant](after, pieces, layer)
    w, clean = pieces.layers[layer], fast.clean_layer(layer)
    readers = slice(0, 2)  # two query heads (the first key/value head's group in the tiny Llama and Qwen 2)
    assert after.worth_it(2)
    generator = torch.Generator().manual_seed(0)
    dz = torch.randn(5, *clean.resid_mid.shape[:2], 2, pieces.d_head, generator=generator)
    change = torch.einsum("rbqae,aed->rbqd", dz, w.W_O[readers])
    mid = clean.resid_mid.unsqueeze(0) + change
    expected = pieces.mlp(layer, mid)  # the model's own norm module on the changed row, the full product
    got = pieces.mlp_out(layer, after.hidden(readers, dz.flatten(-2), mid)).view_as(mid)
    assert expected.abs().max() > 1e-2
    _checked(variant in BROKEN, lambda: torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4))


class _MaxNorm(torch.nn.Module):
    """Not a LayerNorm or an RMSNorm: divides by the largest feature."""

    eps = 1e-5

    def forward(self, x):
        return x / x.abs().amax(-1, keepdim=True)


def test_a_norm_the_parts_do_not_describe_gets_a_reason():
    like = torch.zeros(())
    layer_norm = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(layer_norm.weight)
    torch.nn.init.normal_(layer_norm.bias)
    parts = norm_parts(layer_norm, NormKind.LAYERNORM, 16, like)
    x = torch.randn(4, 16) * 30 + 2
    torch.testing.assert_close(parts(x), layer_norm(x))
    assert "not weight * centre(x)" in norm_parts(_MaxNorm(), NormKind.RMSNORM, 16, like)
    # a LayerNorm read as an RMSNorm misses its centring: caught by the check on random rows
    assert "not weight * centre(x)" in norm_parts(layer_norm, NormKind.RMSNORM, 16, like)
    assert "names no epsilon" in norm_parts(torch.nn.Identity(), NormKind.RMSNORM, 16, like)


def test_exact_without_the_norm_parts_says_so_and_agrees(root, monkeypatch):
    """Where the MLP's norm cannot be read as its parts, exact patching says so and runs the full product:
    the same scores."""
    model = tiny_family("gpt2", root).model
    graph = Graph.from_model(model)
    clean, corrupted = prompts(batch=3, pos=7)
    task = DiscoveryTask(clean, corrupted, mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1],
                                                                      wrong=clean[:, 2]))
    with_parts = discover(model, graph, task, "exact", nodes=False)
    monkeypatch.setattr(LayerPieces, "ln2_parts", lambda self, layer: "a norm the parts do not describe")
    with pytest.warns(SlowPathWarning, match="a norm the parts do not describe; running the MLP's full input"):
        without = discover(model, graph, task, "exact", nodes=False)
    torch.testing.assert_close(with_parts.scores, without.scores, atol=2e-5, rtol=1e-4)
