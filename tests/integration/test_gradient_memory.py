"""EAP's memory-lean gradients (``discovery/_gradients.py``) on every model family, against the engine.

The reference is the patch-mask engine's own mask gradient (``masked_forward`` with a mask that requires
grad): a different code path, which feeds every head a private copy of its input through the bridge's
split q/k/v hooks (or mechwork's computed copies). EAP instead takes the heads' input gradients from the
gradient at the q/k/v projections (``models/_edge_access.head_input_grads``), multiplies each destination's
gradient by the sources' deltas in the backward hook that receives it, and writes the deltas into the
ablation values' buffer. Each of those is checked here, with a broken variant of each caught.
"""

from __future__ import annotations

import pytest
import torch

import mechwork
from mechwork.discovery import DiscoveryTask, discover
from mechwork.graph import Graph, ablation_values, masked_forward
from mechwork.hooks import _edge_points
from mechwork.hooks._runner import embed
from mechwork.models import structure_of
from tests.families import family_names, prompts, tiny_family

FAMILIES = family_names()
# Families whose q/k/v projections are not ln1 then W_{Q,K,V} as the probe checks it (OLMo 2 normalises the
# whole query/key projection, q_norm/k_norm over all heads, before attn.hook_q/k): EAP uses per-head input
# copies there. Every other family must use the gradient route: losing it fails here, not only in memory.
NO_GRADIENT_ROUTE = {"olmo2"}
GRADIENT_ROUTE_EXPECTED = set(FAMILIES) - NO_GRADIENT_ROUTE


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _metric(clean):
    return mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def _mask_gradient(model, graph: Graph, clean, corrupted, metric) -> torch.Tensor:
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    mask = graph.full_mask(1.0).requires_grad_(True)
    metric.score(masked_forward(model, graph, embed(model, clean), mask, ablated, position=-1)).backward()
    return mask.grad


def _projection_only(block, x, grads):
    """Broken route: the projections' transpose without the norm's Jacobian."""
    return torch.cat([torch.einsum("bphe,hde->bphd", grad, getattr(block.attn, f"W_{port.upper()}").detach())
                      for port, grad in grads.items()], dim=2).to(x.dtype)


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
@pytest.mark.parametrize("name", FAMILIES)
def test_eap_is_minus_the_engines_mask_gradient(name, root, monkeypatch):
    model = tiny_family(name, root).model
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    metric = _metric(clean)
    task = DiscoveryTask(clean, corrupted, metric)
    reference = -_mask_gradient(model, graph, clean, corrupted, metric)
    assert reference.abs().max() > 1e-3
    torch.testing.assert_close(discover(model, graph, task, "eap").scores, reference, atol=1e-5, rtol=1e-4)
    if not structure_of(model).edge_access.head_input_grads:
        assert name not in GRADIENT_ROUTE_EXPECTED
        return
    monkeypatch.setattr(_edge_points, "head_input_grads", _projection_only)
    wrong = discover(model, graph, task, "eap").scores
    heads_in = torch.tensor([".attn." in e.split("->")[1] for e in graph.edges])
    assert (wrong - reference)[heads_in].abs().max() > 1e-4


def test_the_gradient_route_is_used_where_expected(root):
    used = {name for name in FAMILIES if structure_of(tiny_family(name, root).model).edge_access.head_input_grads}
    assert used == GRADIENT_ROUTE_EXPECTED, sorted(used ^ GRADIENT_ROUTE_EXPECTED)


def test_the_route_needs_no_per_head_input_copies(root, monkeypatch):
    """With the route, the bridge's split q/k/v inputs are off during EAP: a hook on them never fires."""
    model = tiny_family("gpt2", root).model
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    fired = []
    real = _edge_points.head_input_hooks

    def counting(model, layer, port, edit):
        fired.append((layer, port))
        return real(model, layer, port, edit)

    monkeypatch.setattr(_edge_points, "head_input_hooks", counting)
    discover(model, graph, DiscoveryTask(clean, corrupted, _metric(clean)), "eap")
    assert fired == []


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "zero"])
def test_deltas_may_overwrite_only_a_batchs_own_ablation_values(root, ablation):
    """The deltas go into the ablation values' buffer only where that buffer belongs to the call: a mean
    shared across micro-batches (``shared_ablation``) is left as it was, and scores equal the mask gradient."""
    model = tiny_family("gpt2", root).model
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    metric = _metric(clean)
    shared = ablation_values(model, graph, ablation, clean, corrupted)
    before = shared.clone()
    task = DiscoveryTask(clean, corrupted, metric, ablation=ablation, shared_ablation=shared)
    scores = discover(model, graph, task, "eap").scores
    assert torch.equal(shared, before)
    mask = graph.full_mask(1.0).requires_grad_(True)
    metric.score(masked_forward(model, graph, embed(model, clean), mask, before, position=-1)).backward()
    torch.testing.assert_close(scores, -mask.grad, atol=1e-5, rtol=1e-4)


class _ScaledRMSNorm(torch.nn.Module):
    """A norm written from elementwise operations (Gemma's ``1 + weight`` RMSNorm): the autograd branch."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "scaled rmsnorm", "broken: layernorm with the wrong rows"])
def test_norm_vjp_equals_one_backward_per_cotangent(norm, monkeypatch):
    """``norm_vjp`` (PyTorch's LayerNorm backward once over every cotangent, or autograd batched over them)
    equals one autograd backward per cotangent, each through its own copy of the input."""
    from mechwork.models import _edge_access

    torch.manual_seed(0)
    d = 24
    module = {"rmsnorm": torch.nn.RMSNorm(d), "scaled rmsnorm": _ScaledRMSNorm(d)}.get(norm, torch.nn.LayerNorm(d))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_()
    x, cotangents = torch.randn(3, 5, d), torch.randn(7, 3, 5, d)
    expected = []
    for cotangent in cotangents:
        copy = x.clone().requires_grad_(True)
        expected.append(torch.autograd.grad(module(copy), copy, cotangent)[0])
    if norm.startswith("broken"):  # the row statistics of another input
        statistics = torch.ops.aten.native_layer_norm
        monkeypatch.setattr(torch.ops.aten, "native_layer_norm", lambda x, *args: statistics(x.roll(1, 0), *args))
    got = _edge_access.norm_vjp(module, x)(cotangents)
    close = torch.allclose(got, torch.stack(expected), atol=1e-5, rtol=1e-4)
    assert close != norm.startswith("broken")
