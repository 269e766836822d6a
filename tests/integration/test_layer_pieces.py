"""The layer pieces (``discovery/_layer_pieces.py``) on every family their structure declares them for,
against the bridge's own blocks: exact patching's scores, and ACDC's circuits computed from the pieces.

The families differ where the pieces read the structure: GPT-2 (LayerNorm, dense GELU MLP, absolute
positions), Llama and Qwen 2 (RMSNorm, gated SiLU MLP, rotary positions, two query heads per key/value
head; Qwen 2's q/k/v projections have biases), Gemma (``1 + weight`` RMSNorm, gated GELU MLP, one key/value
head for all query heads, its own attention scaling). Each test also shows that it catches a broken piece.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import mechwork
from mechwork.discovery import DiscoveryTask, _exact_fast, _layer_pieces, discover
from mechwork.discovery._acdc_fast import PieceTrials
from mechwork.graph import Graph, ablation_values, clean_start
from mechwork.hooks._runner import embed
from mechwork.models import SlowPathWarning, structure_of
from tests.families import family_names, prompts, tiny_family
from tests.integration.test_exact_speed import assert_trials_equal_the_engine
from tests.integration.test_method_values import _checked

# the references (the bridge's blocks, the engine) resume the forward through the bridge on these families,
# and say so; a layer-pieces fallback stays an error (pyproject's filterwarnings)
pytestmark = pytest.mark.filterwarnings("ignore:.*resuming the forward pass:mechwork.models.SlowPathWarning")

PIECE_FAMILIES = ["gpt2", "llama", "qwen2", "gemma"]
# mistral is declared too; its tiny config attends over a sliding window, which the pieces refuse (tested below)
DECLARED = {*PIECE_FAMILIES, "mistral"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _task(model):
    clean, corrupted = prompts(batch=3, pos=7)
    metric = mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])
    return DiscoveryTask(clean, corrupted, metric)


def _without_slow_path(run):
    """``run()``, failing if any layer pieces fell back to the bridge's blocks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*layer pieces", category=SlowPathWarning)
        return run()


def test_the_declared_families_are_the_ones_tested(root):
    declared = {name for name in family_names() if structure_of(tiny_family(name, root).model).layer_pieces}
    assert declared == DECLARED


def test_a_sliding_window_is_refused_with_the_reason(root):
    model = tiny_family("mistral", root).model
    assert "sliding window" in _exact_fast.why_no_layer_pieces(model)


def _one_query_head_per_key_head(self, port, heads):
    """Broken grouped-query attention: a key/value edge changes only the first query head of its group."""
    return heads[:, None] * (self.pieces.group if port else 1)


def _with_broken(broken: str, applies_to: list[str]) -> list:
    """(family, variant) pairs: every family as it is, run in small chunks of rows (as large batches are on
    a CPU), and ``broken`` on the families it can break."""
    return ([(name, "pieces") for name in PIECE_FAMILIES] + [("gpt2", "chunks"), ("llama", "chunks")]
            + [(name, broken) for name in applies_to])


GROUPED = ["llama", "qwen2", "gemma"]  # several query heads per key/value head
ROTARY = ["llama", "qwen2", "gemma"]


@pytest.mark.parametrize(("name", "variant"), _with_broken("broken: one query head per key/value head", GROUPED))
def test_exact_pieces_equal_the_bridge_blocks(root, name, variant, monkeypatch):
    """Every edge's exact score from the pieces (used: no fallback) equals rerunning the bridge's blocks."""
    model = tiny_family(name, root).model
    graph, task = Graph.from_model(model), _task(model)
    whole = discover(model, graph, task, "exact", nodes=False, pieces=False)
    if variant == "chunks":  # a few rows per fused run: the chunked path, which small tests never reach
        monkeypatch.setattr(_layer_pieces, "CHUNK_TOKENS", 8)
    broken = variant.startswith("broken")
    if broken:
        assert structure_of(model).grouped_query
        monkeypatch.setattr(_exact_fast.FastExact, "_readers", _one_query_head_per_key_head)
    pieces = _without_slow_path(lambda: discover(model, graph, task, "exact", nodes=False, max_rows=12))
    assert whole.scores.abs().max() > 1e-2
    _checked(broken, lambda: torch.testing.assert_close(pieces.scores, whole.scores, atol=2e-5, rtol=1e-4))


@pytest.mark.parametrize(("name", "variant"), _with_broken("broken: keys not rotated in trials", ROTARY))
def test_acdc_pieces_equal_the_engine_on_random_circuits(root, name, variant, monkeypatch):
    """Several circuits at once, each with a random 40% of the edges at or above the start layer ablated,
    from every start layer: the pieces' logits equal the patch-mask engine's through the bridge."""
    model = tiny_family(name, root).model
    graph, task = Graph.from_model(model), _task(model)
    ablated = ablation_values(model, graph, "corrupted", task.clean, task.corrupted)
    with torch.no_grad():
        start = clean_start(model, graph, embed(model, task.clean))
    if variant == "chunks":
        monkeypatch.setattr(_layer_pieces, "CHUNK_TOKENS", 8)
    fast = _without_slow_path(lambda: _exact_fast.fast_exact_for(model, start.resid_pre, -1))
    assert fast is not None
    broken = variant.startswith("broken")
    if broken:
        pieces = fast.pieces
        assert pieces.rotary is not None
        real = _layer_pieces.LayerPieces.rotate

        def keys_unrotated(x, positions):  # keys have the key/value heads' count, queries the query heads'
            return x if x.shape[1] == pieces.n_kv_heads != pieces.n_heads else real(pieces, x, positions)

        monkeypatch.setattr(pieces, "rotate", keys_unrotated)
    trials = PieceTrials(fast, graph, start.outputs, ablated)
    _checked(broken, lambda: assert_trials_equal_the_engine(model, graph, trials, start, ablated, -1))


@pytest.mark.parametrize("name", PIECE_FAMILIES)
def test_acdc_from_the_pieces_finds_the_circuit_one_trial_at_a_time_finds(root, name):
    model = tiny_family(name, root).model
    graph, task = Graph.from_model(model), _task(model)
    reference = discover(model, graph, task, "acdc", threshold=0.005, from_layer=False)
    ours = _without_slow_path(lambda: discover(model, graph, task, "acdc", threshold=0.005))
    assert ours.circuit == reference.circuit
    torch.testing.assert_close(ours.scores, reference.scores, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["as is", "broken: erf GELU"])
def test_the_tanh_gelu_equals_pytorchs(variant):
    """The pieces' tanh GELU (``x sigmoid(2u)`` on a CPU in float32) against PyTorch's tanh form in float64,
    over every magnitude a residual reaches, on a strided view (a gated MLP's half) as well."""
    x = torch.cat([torch.linspace(-40, 40, 200_001), torch.randn(20_000) * 3, torch.tensor([0.0, -0.0, 1e-30])])
    expected = F.gelu(x.double(), approximate="tanh")
    activation = _layer_pieces.tanh_gelu_ if variant == "as is" else F.gelu
    strided = torch.stack([x, x], dim=1)[:, 0]
    got = [activation(x.clone()), activation(strided)]
    for value in got:
        _checked(variant != "as is", lambda v=value: torch.testing.assert_close(v.double(), expected, atol=1e-6,
                                                                                 rtol=2e-6))
    tracked = x[:100].clone().requires_grad_(True)  # autograd: PyTorch's own, the input left as it was
    torch.testing.assert_close(_layer_pieces.tanh_gelu_(tracked), F.gelu(tracked, approximate="tanh"))
    assert torch.equal(tracked.detach(), x[:100])
