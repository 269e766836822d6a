"""The fast paths of exact patching and ACDC against their slow references, each check catching a broken
variant: fused GPT-2 blocks and the logit columns a metric reads (exact), circuits computed from the layer
pieces and speculative batches of trials (ACDC)."""

import pytest
import torch
import torch.nn.functional as F

import mechwork
from mechwork.discovery import DiscoveryTask, _exact_fast, discover, task_from_data
from mechwork.discovery import acdc as acdc_module
from mechwork.discovery import exact as exact_module
from mechwork.discovery._acdc_fast import PieceTrials
from mechwork.graph import Graph, ablation_values, clean_start, masked_forward_from
from mechwork.hooks._runner import embed
from mechwork.models import SlowPathWarning
from tests.integration.test_method_values import _checked  # passes for the code, raises for a broken variant


@pytest.mark.parametrize("variant", ["columns", "broken: answer and wrong columns swapped"])
def test_exact_reads_only_the_metric_columns_and_agrees_with_every_column(tiny, tiny_pair, monkeypatch, variant):
    """A logit difference reads two logits per prompt: the pieces compute only those columns. Scores equal
    rerunning whole blocks with every column; mapping the columns wrongly is caught."""
    clean, corrupted = tiny_pair
    metric = mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])
    task, graph = DiscoveryTask(clean, corrupted, metric), Graph.from_model(tiny)
    fast = _exact_fast.fast_exact_for(tiny, exact_module._clean_run(tiny, graph, task).resid_pre, -1, metric)
    assert fast.readout.columns is not None and len(fast.readout.columns) <= 2 * len(clean)
    whole = discover(tiny, graph, task, "exact", nodes=False, pieces=False)
    if variant != "columns":
        real = _exact_fast._columns_read

        def swapped(m):
            columns, narrowed = real(m)
            return columns, type(narrowed)(position=m.position, answers=narrowed.wrong, wrong=narrowed.answers)

        monkeypatch.setattr(_exact_fast, "_columns_read", swapped)
    pieces = discover(tiny, graph, task, "exact", nodes=False)
    _checked(variant != "columns",
             lambda: torch.testing.assert_close(pieces.scores, whole.scores, atol=2e-5, rtol=1e-4))


def test_the_pieces_check_catches_a_wrong_activation(tiny, tiny_pair, tiny_task_exact, monkeypatch):
    """The fused MLP must use the model's own activation: a wrong one (ReLU for GPT-2's GELU) is caught by the
    check on the clean run, which says so and leaves exact patching to the bridge's blocks. (The check's
    tolerance does not separate GELU's tanh and erf forms: that the pieces use the right one is shown by
    their scores equalling the bridge's to 2e-5, test_discovery.py.)"""
    resid_pre = exact_module._clean_run(tiny, Graph.from_model(tiny), tiny_task_exact).resid_pre
    assert _exact_fast.fast_exact_for(tiny, resid_pre, -1) is not None
    monkeypatch.setitem(_exact_fast.ACTIVATIONS, tiny.cfg.act_fn, F.relu)
    with pytest.warns(SlowPathWarning, match="do not reproduce"):
        assert _exact_fast.fast_exact_for(tiny, resid_pre, -1) is None


@pytest.fixture(scope="module")
def tiny_task_exact(tiny_pair, tiny_metric):
    clean, corrupted = tiny_pair
    return DiscoveryTask(clean, corrupted, tiny_metric)


@pytest.mark.parametrize("variant", ["pieces", "broken: outputs above the start layer not passed on"])
@pytest.mark.parametrize("position", [-1, 4])
def test_acdc_pieces_equal_the_engine_on_random_circuits(tiny, tiny_pair, monkeypatch, variant, position):
    """Several circuits at once, each with a random 40% of the edges at or above the start layer ablated
    (every trial its own), from every start layer: the pieces' logits equal the patch-mask engine's."""
    clean, corrupted = tiny_pair
    graph = Graph.from_model(tiny)
    ablated = ablation_values(tiny, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        start = clean_start(tiny, graph, embed(tiny, clean))
    fast = _exact_fast.fast_exact_for(tiny, start.resid_pre, position)
    if variant != "pieces":
        monkeypatch.setattr(PieceTrials, "_record", lambda self, outputs, sources, out, at_position: None)
    trials = PieceTrials(fast, graph, start.outputs, ablated)
    _checked(variant != "pieces", lambda: assert_trials_equal_the_engine(tiny, graph, trials, start, ablated, position))


def assert_trials_equal_the_engine(model, graph, trials: PieceTrials, start, ablated, position: int) -> None:
    """From every start layer, three circuits with a random 40% of the edges at or above it ablated (each its
    own): ``trials``' logits equal the patch-mask engine's (``masked_forward_from``)."""
    generator = torch.Generator().manual_seed(0)
    for layer in range(graph.n_layers + 1):
        masks = (torch.rand(3, graph.n_edges, generator=generator) < 0.6).float()
        masks[:, graph.destination_layers < min(layer, graph.n_layers - 1)] = 1.0
        ours = trials.logits(masks, layer)
        for mask, logits in zip(masks, ours, strict=True):
            reference = masked_forward_from(model, graph, start, min(layer, graph.n_layers - 1), mask, ablated,
                                            position=position)
            torch.testing.assert_close(logits, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["speculative batches", "broken: trials after a wrong guess kept"])
@pytest.mark.parametrize("threshold", [0.01, float("-inf")])
def test_acdc_batched_trials_decide_as_one_trial_at_a_time(induction, induction_data, monkeypatch, variant, threshold):
    """ACDC's trials, batched on the pieces with guessed earlier decisions, give the circuit and scores of
    whole-model trials one at a time (zoo:induction: its planted circuit kept among removed edges, so some
    guesses fail mid-batch; threshold -inf: every edge kept); using trials whose guess failed is caught."""
    graph = Graph.from_model(induction)
    task = task_from_data(induction, induction_data, metric="kl")
    reference = discover(induction, graph, task, "acdc", threshold=threshold, from_layer=False)
    calls, dropped = [], []
    real_call, real_after = acdc_module._Loss.__call__, acdc_module._Speculation.after

    def counted(self, masks, layer=0):
        calls.append(1 if masks.ndim == 1 else len(masks))
        return real_call(self, masks, layer)

    def after(self, held, last_removed):
        dropped.append(not held)
        real_after(self, held, last_removed)

    monkeypatch.setattr(acdc_module._Loss, "__call__", counted)
    monkeypatch.setattr(acdc_module._Speculation, "after", after)
    if variant != "speculative batches":
        monkeypatch.setattr(acdc_module, "_guess_held", lambda removed, guess: True)
    batched = discover(induction, graph, task, "acdc", threshold=threshold)
    assert max(calls) > 1, "trials should run in batches"
    if threshold > 0:
        assert len(reference.circuit) == len(mechwork.zoo.get_entry("induction").ground_truth().edges)
        assert variant != "speculative batches" or any(dropped), "some guesses should fail mid-batch"

    def check():
        assert batched.circuit == reference.circuit
        torch.testing.assert_close(batched.scores, reference.scores, atol=1e-5, rtol=1e-4)

    _checked(variant != "speculative batches" and threshold > 0, check)
