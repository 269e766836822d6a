"""Metrics, node names, weight construction and the zoo registry: no zoo model needed."""

import pytest
import torch

from mechwork._nodes import edge, edge_nodes, head_node, parse_node
from mechwork.metrics import Accuracy, CrossEntropy, KLDivergence, LogitDiff, MetricError, ProbDiff, as_scalar
from mechwork.models.zoo import UnknownZooModelError, ZooEntry, get_entry, register
from mechwork.models.zoo._construct import ResidualLayout


def test_metrics_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], [[0.0, 0.0, 0.0], [2.0, 0.0, 1.0]]])
    answers, wrong = torch.tensor([1, 0]), torch.tensor([0, 2])
    assert float(LogitDiff(answers=answers, wrong=wrong)(logits)) == pytest.approx((2.0 + 1.0) / 2)
    probs = logits[:, -1].softmax(-1)
    expected = ((probs[0, 1] - probs[0, 0]) + (probs[1, 0] - probs[1, 2])) / 2
    assert float(ProbDiff(answers=answers, wrong=wrong)(logits)) == pytest.approx(float(expected))
    assert float(Accuracy(answers=answers)(logits)) == 1.0
    assert float(Accuracy(answers=torch.tensor([0, 0]), wrong=torch.tensor([1, 1]))(logits)) == 0.5
    ce = -(logits[:, -1].log_softmax(-1)[[0, 1], [1, 0]]).mean()
    assert float(CrossEntropy(answers=answers)(logits)) == pytest.approx(float(ce))
    assert float(KLDivergence(reference=logits[:, -1])(logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(KLDivergence(reference=logits[:, 0])(logits)) > 0


def test_metric_errors():
    with pytest.raises(MetricError, match="batch"):
        LogitDiff(answers=torch.tensor([1]), wrong=torch.tensor([0]))(torch.zeros(2, 3, 4))
    with pytest.raises(MetricError, match="empty"):
        LogitDiff(answers=torch.tensor([], dtype=torch.long), wrong=torch.tensor([], dtype=torch.long))(
            torch.zeros(0, 3, 4)
        )
    with pytest.raises(MetricError, match="scalar"):
        as_scalar(torch.zeros(3), "m")


def test_node_and_edge_names():
    assert edge("input", head_node(1, 0), "q") == "input->blocks.1.attn.head.0.q"
    src, dst = edge_nodes("blocks.0.attn.head.2->blocks.3.attn.head.1.k")
    assert (src, dst) == ("blocks.0.attn.head.2", "blocks.3.attn.head.1")
    ref = parse_node("blocks.2.attn.head.5.v")
    assert (ref.kind, ref.layer, ref.head, ref.port) == ("head", 2, 5, "v")
    assert parse_node("blocks.3.mlp").kind == "mlp"
    with pytest.raises(ValueError, match="not a node name"):
        parse_node("blocks.3.attn")


def test_residual_basis_is_orthogonal_to_layernorm_directions():
    layout = ResidualLayout(64)
    u = layout.basis()
    assert u.dtype == torch.float64  # weights are built in float64 and rounded once (reproducible bits)
    torch.testing.assert_close(u.T @ u, torch.eye(61, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float((torch.ones(64, dtype=torch.float64) @ u).abs().max()) < 1e-12  # features have zero mean
    assert float(u[:2].abs().max()) < 1e-12  # and never touch the reserved constant dimensions
    layout.alloc("a", 60)
    with pytest.raises(ValueError, match="too small"):
        layout.alloc("b", 2)


def test_registry_refuses_duplicates_and_suggests_names():
    with pytest.raises(ValueError, match="already registered"):
        entry = get_entry("induction")
        register(ZooEntry("induction", "dup", "constructed", entry.builder, entry.task, entry.ground_truth))
    with pytest.raises(UnknownZooModelError, match="Did you mean 'lookup'"):
        get_entry("lookpu")
