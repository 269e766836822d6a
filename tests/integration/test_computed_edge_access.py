"""The access points mechwork computes where the bridge has no edge hook (``models/_edge_access.py``):
GPT-Neo / OPT / GPT-J heads (outputs from hook_z and W_O, inputs through ln1 and W_Q/W_K/W_V) and the
shared-ln1 MLP input of GPT-J, Phi and Falcon. Each is checked against the pass-by-pass brute-force
reference (``tests/edge_reference_passes.py``), each deliberately broken variant is caught, and a bridge
whose hooks do not match the computation is refused rather than answered wrongly."""

from __future__ import annotations

import pytest
import torch

from mechwork._nodes import edge, head_node, kv_head_node, mlp_node
from mechwork.graph import Graph, ablation_values, run_circuit
from mechwork.hooks import path_patching, path_patching_sweep
from mechwork.hooks._validation import InputError
from mechwork.metrics import LogitDiff
from mechwork.models import UnsupportedModelError, structure_of
from mechwork.models import _edge_access as edge_access
from mechwork.models._edge_access import Access
from tests.edge_reference_passes import run_with_edges_ablated_by_passes
from tests.families import prompts, tiny_family

pytestmark = pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("computed")


def _metric(clean):
    return LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def _engine_error(model, removed: set[str]) -> float:
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        ours = run_circuit(model, graph, clean, graph.mask_of(set(graph.edges) - removed), ablated)
    return float((ours - run_with_edges_ablated_by_passes(model, clean, corrupted, removed)).abs().max())


# one edge per computed route: into a head's q (inputs), out of a head (outputs), into a shared-norm MLP
ROUTES = {
    "gpt_neo": ({edge(head_node(0, 1), head_node(1, 2), "q"), edge(head_node(0, 3), "logits")}, "project_heads"),
    "opt": ({edge("input", head_node(1, 0), "k"), edge(head_node(1, 2), "logits")}, "project_heads"),
    "gptj": ({edge(head_node(0, 2), mlp_node(1)), edge(head_node(1, 1), "logits")}, "norm_module"),
    "phi": ({edge("input", mlp_node(0)), edge(mlp_node(0), mlp_node(1))}, "norm_module"),
    "falcon": ({edge(head_node(0, 0), mlp_node(1)), edge("input", kv_head_node(1, 0), "v")}, "norm_module"),
}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_computed_routes_equal_brute_force_and_their_broken_variants_do_not(name, root, monkeypatch):
    model = tiny_family(name, root).model
    access = structure_of(model).edge_access
    assert Access.COMPUTED in (access.head_outputs, access.head_inputs, access.mlp_inputs)
    removed, broken = ROUTES[name]
    assert _engine_error(model, removed) < 1e-4
    if broken == "project_heads":  # forget the norm before the per-head projection
        def no_norm(block, port, copies):
            attn = block.attn
            out = torch.einsum("bphd,hde->bphe", copies, getattr(attn, f"W_{port.upper()}"))
            bias = getattr(attn, f"b_{port.upper()}")
            return out if bias is None else out + bias
        monkeypatch.setattr("mechwork.hooks._edge_points.project_heads", no_norm)
    else:  # feed the MLP its pre-norm residual
        monkeypatch.setattr("mechwork.hooks._edge_points.norm_module", lambda block: (lambda x: x))
    assert _engine_error(model, removed) > 1e-2


def test_head_writes_with_the_wrong_heads_are_caught(root, monkeypatch):
    model = tiny_family("gpt_neo", root).model
    removed = {edge(head_node(0, 1), "logits"), edge(head_node(1, 3), mlp_node(1))}
    assert _engine_error(model, removed) < 1e-4
    monkeypatch.setattr("mechwork.hooks._edge_points.head_writes",
                        lambda block, z: edge_access.head_writes(block, z.flip(2)))
    assert _engine_error(model, removed) > 1e-2


def test_a_bridge_whose_hooks_do_not_match_the_computation_is_refused(root):
    """The probe runs the computed routes against the model: with hook_q edited on the bridge (so ln1 then
    W_Q no longer gives it), head inputs are unavailable and the graph refuses, naming why."""
    model = tiny_family("gpt_neo", root).model
    hook = model.blocks[1].attn.hook_q
    model.__dict__.pop("_mechwork_edge_access")
    hook.add_hook(lambda act, hook: act * 2.0, is_permanent=True)
    try:
        access = structure_of(model).edge_access
        assert (access.head_outputs, access.head_inputs) == (Access.COMPUTED, Access.NONE)
        with pytest.raises(UnsupportedModelError, match="GPTNeoForCausalLM.*W_Q/W_K/W_V does not reproduce"):
            Graph.from_model(model)
    finally:
        hook.remove_hooks(including_permanent=True)
        model.__dict__.pop("_mechwork_edge_access")
    assert structure_of(model).edge_access.head_inputs is Access.COMPUTED


@pytest.mark.parametrize("name,sender,receiver", [
    ("gpt_neo", head_node(0, 2), f"{head_node(1, 1)}.v"),
    ("gptj", "input", mlp_node(0)),
    ("opt", head_node(0, 0), mlp_node(0)),
    ("llama", head_node(0, 3), f"{kv_head_node(1, 1)}.k"),
])
def test_path_patching_is_one_ablated_edge(name, sender, receiver, root):
    """Path patching sender -> receiver (noising) is brute-force ablation of exactly that edge, on
    computed routes and on grouped-query key/value heads."""
    model = tiny_family(name, root).model
    clean, corrupted = prompts()
    metric = _metric(clean)
    ours = path_patching(model, clean, corrupted, metric, sender, receiver, direction="noise")
    reference = float(metric(run_with_edges_ablated_by_passes(model, clean, corrupted, {f"{sender}->{receiver}"})))
    assert ours == pytest.approx(reference, abs=1e-4)
    with torch.no_grad():
        assert abs(reference - float(metric(model(clean)))) > 1e-3  # the path matters


def test_path_patching_follows_the_block_structure(root):
    gptj, llama = tiny_family("gptj", root).model, tiny_family("llama", root).model
    clean, corrupted = prompts()
    metric = _metric(clean)
    with pytest.raises(InputError, match="parallel block the MLP reads the block input"):
        path_patching(gptj, clean, corrupted, metric, head_node(0, 1), mlp_node(0))
    with pytest.raises(InputError, match="kv_head.1.k"):
        path_patching(llama, clean, corrupted, metric, head_node(0, 1), f"{head_node(1, 3)}.k")
    sweep = path_patching_sweep(llama, clean, corrupted, metric, head_node(0, 1), port="k", direction="noise")
    assert sweep.values.shape == (2, 2)  # the head axis is the key/value heads
    reference = float(metric(run_with_edges_ablated_by_passes(
        llama, clean, corrupted, {edge(head_node(0, 1), kv_head_node(1, 0), "k")})))
    assert float(sweep.values[1, 0]) == pytest.approx(reference, abs=1e-4)
