"""Micro-batching (``batch_size``) gives what one batch gives, for every method, evaluation and sweep;
bfloat16 agrees with float32 within stated tolerances; CUDA where a GPU is present.

7 prompts in batches of 3 (3 + 3 + 1: unequal sizes, so a mean of per-batch means would be wrong, and the
last check shows the same comparison catches exactly that).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import mechwork
import mechwork._batching as batching
from mechwork.discovery import (
    CircuitEvaluator,
    discover,
    faithfulness_curve,
    methods,
    task_from_data,
    top_n,
)
from mechwork.graph import Graph, ablation_values
from mechwork.hooks import activation_patching, attribution_patching, path_patching
from mechwork.hooks._path import path_patching_sweep
from mechwork.models._tokenizer import word_level_tokenizer

N_PROMPTS, BATCH = 7, 3
TOLERANCE = 1e-5  # float32, relative to the largest magnitude (at least 1)
# Options that keep the slow methods quick here; every other option stays at its default.
QUICK = {"learned-mask": {"steps": 8}, "eap-ig": {"steps": 3}}


def assert_same(one, micro, what: str, tolerance: float = TOLERANCE) -> None:
    """The one-batch and micro-batched values agree to ``tolerance`` times the largest magnitude (>= 1)."""
    one, micro = torch.as_tensor(one, dtype=torch.float64), torch.as_tensor(micro, dtype=torch.float64)
    assert one.shape == micro.shape, what
    finite = torch.isfinite(one)
    assert torch.equal(finite, torch.isfinite(micro)), f"{what}: NaNs in different places"
    scale = max(1.0, float(one[finite].abs().max())) if finite.any() else 1.0
    worst = float((one[finite] - micro[finite]).abs().max()) if finite.any() else 0.0
    assert worst <= tolerance * scale, f"{what}: micro-batched differs from one batch by {worst:.3g} ({scale=:.3g})"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random 2-layer GPT-2 (non-zero biases): every prompt scores differently, so a wrong weighting of
    micro-batches shows (on a zoo model with a planted mechanism every prompt scores nearly the same)."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30, n_positions=16, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("tiny2")
    hf.save_pretrained(folder)
    word_level_tokenizer([f"w{i}" for i in range(30)], "w0").save_pretrained(folder)
    return mechwork.load(folder)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randint(1, 30, (2, N_PROMPTS, 8), generator=g)
    answers, wrong = torch.randint(1, 30, (2, N_PROMPTS), generator=g)
    return SimpleNamespace(clean=clean, corrupted=corrupted, answers=answers, wrong=wrong, position=-1)


@pytest.fixture(scope="module")
def graph(model):
    return Graph.from_model(model)


@pytest.fixture(scope="module")
def zoo_data():
    return mechwork.zoo.get_entry("induction").task.data(N_PROMPTS, seed=3)


@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_every_method_micro_batched_equals_one_batch(model, graph, data, metric):
    task = task_from_data(model, data, metric=metric)
    assert len(methods()) >= 6
    for name in [m.name for m in methods()]:  # read from the registry, so a new method cannot be left out
        one = discover(model, graph, task, name, **QUICK.get(name, {}))
        micro = discover(model, graph, task, name, batch_size=BATCH, **QUICK.get(name, {}))
        assert micro.options["batch_size"] == BATCH
        assert_same(one.scores, micro.scores, f"{name} ({metric}) edge scores")
        assert one.circuit == micro.circuit, f"{name} ({metric}): a different circuit"
        if one.node_scores is not None:
            assert one.node_scores.keys() == micro.node_scores.keys()
            assert_same(list(one.node_scores.values()), list(micro.node_scores.values()), f"{name} node scores")


def test_mean_ablation_by_micro_batches(model, graph, data):
    one = ablation_values(model, graph, "mean", data.clean, data.corrupted)
    micro = ablation_values(model, graph, "mean", data.clean, data.corrupted, batch_size=BATCH)
    assert micro.shape == one.shape == (1, data.clean.shape[1], graph.n_sources, model.cfg.d_model)
    assert_same(one, micro, "mean ablation values")
    task = task_from_data(model, data, ablation="mean")
    for name in ("eap", "exact"):  # every method reads the shared mean through task.ablated (see _batches)
        a = discover(model, graph, task, name, **QUICK.get(name, {}))
        b = discover(model, graph, task, name, batch_size=BATCH, **QUICK.get(name, {}))
        assert_same(a.scores, b.scores, f"{name} (mean ablation) edge scores")


def test_acdc_task_metric_objective(model, graph, data):
    """``|M(circuit) - M(full)|`` is taken of the means over every prompt, not per micro-batch."""
    task = task_from_data(model, data)
    one = discover(model, graph, task, "acdc", objective="metric", threshold=0.5)
    micro = discover(model, graph, task, "acdc", objective="metric", threshold=0.5, batch_size=BATCH)
    assert one.circuit == micro.circuit
    assert_same(one.scores, micro.scores, "acdc (metric objective)")


@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_faithfulness_and_curves(model, graph, data, metric):
    task = task_from_data(model, data, metric=metric)
    one = CircuitEvaluator(model, graph, task)
    micro = CircuitEvaluator(model, graph, dataclasses.replace(task, batch_size=BATCH))
    scores = discover(model, graph, task, "eap")
    assert_same([one.full, one.empty], [micro.full, micro.empty], "full and empty metric")
    # a ratio (m(C) - m(empty)) / (m(full) - m(empty)): metric rounding is divided by the span
    ratio = TOLERANCE * max(1.0, abs(one.full), abs(one.empty)) / abs(one.full - one.empty)
    for k in (1, 3, 10):
        edges = top_n(scores, k)
        assert_same(one.value(graph.mask_of(edges)), micro.value(graph.mask_of(edges)), f"metric of the top {k}")
        assert_same(one.faithfulness(edges), micro.faithfulness(edges), f"faithfulness of the top {k}", ratio)
    assert_same(faithfulness_curve(one, scores).faithfulness, faithfulness_curve(micro, scores).faithfulness,
                "faithfulness curve", ratio)


def test_patching_sweeps(model, data):
    metric = mechwork.discovery.make_metric("logit_diff", model, data)
    args = (model, data.clean, data.corrupted, metric)
    sweeps = {
        "activation z per position": lambda **b: activation_patching(*args, "z", per_position=True, **b),
        "activation resid_pre (noise)": lambda **b: activation_patching(*args, "resid_pre", direction="noise", **b),
        "attribution z": lambda **b: attribution_patching(*args, "z", **b),
        "path sweep 0.0 -> k": lambda **b: path_patching_sweep(*args, "blocks.0.attn.head.0", "k", **b),
    }
    for what, sweep in sweeps.items():
        one, micro = sweep(), sweep(batch_size=BATCH)
        assert_same(one.values, micro.values, what)
        assert_same([one.clean_value, one.corrupted_value], [micro.clean_value, micro.corrupted_value], what)
    path = [path_patching(*args, "blocks.0.attn.head.0", "blocks.1.attn.head.0.k", batch_size=b) for b in (None, 3)]
    assert_same(path[0], path[1], "path patching")


def test_kl_reference_by_micro_batches(model, data):
    one = mechwork.discovery.make_metric("kl", model, data)
    micro = mechwork.discovery.make_metric("kl", model, data, batch_size=BATCH)
    assert_same(one.reference, micro.reference, "KL reference logits")
    assert one.for_rows(slice(3, 6), N_PROMPTS).reference.shape[0] == 3


def test_a_mean_of_means_is_caught(model, graph, data, monkeypatch):
    """Weighting batches of 3, 3 and 1 prompts equally (a mean of per-batch means) is what the checks above
    would catch: the same comparison fails."""
    task = task_from_data(model, data)
    one = discover(model, graph, task, "eap")
    metric = task.metric
    sweep_one = activation_patching(model, data.clean, data.corrupted, metric, "z")
    monkeypatch.setattr(batching, "weights_of", lambda sizes: [1 / len(sizes)] * len(sizes))
    assert batching.split_rows(N_PROMPTS, BATCH)[-1].weight == pytest.approx(1 / 3)
    with pytest.raises(AssertionError, match="differs from one batch"):
        assert_same(one.scores, discover(model, graph, task, "eap", batch_size=BATCH).scores, "eap")
    with pytest.raises(AssertionError, match="differs from one batch"):
        sweep = activation_patching(model, data.clean, data.corrupted, metric, "z", batch_size=BATCH)
        assert_same(sweep_one.values, sweep.values, "activation patching")


def test_batch_size_is_checked(model, data):
    with pytest.raises(ValueError, match="batch_size"):
        task_from_data(model, data, batch_size=0)
    rows = batching.split_rows(N_PROMPTS, BATCH)
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 7)]
    assert sum(r.weight for r in rows) == pytest.approx(1.0)
    assert batching.split_rows(N_PROMPTS, 100) == batching.split_rows(N_PROMPTS, None)


# ---- dtype and device ------------------------------------------------------------------------------------
# bfloat16 against float32 on zoo:induction (7 prompts, batches of 3), measured: metric values within 0.2 %,
# every edge score within 0.3 % of the largest score, the same edges above 10 % of it. Stated tolerances:
BF16_METRIC = 0.01  # relative
BF16_SCORES = 0.01  # of the largest score
BF16_METHODS = ("eap", "exact", "node-patching")
BF16_OPTIONS = {"exact": {"nodes": False}}  # bfloat16 matmuls are slow on CPU: edges only


@pytest.fixture(scope="module")
def induction_bf16():
    return mechwork.load("zoo:induction", dtype=torch.bfloat16)


def _important(scores, share: float = 0.1) -> frozenset[str]:
    cut = share * float(scores.importance().max())
    return frozenset(e for e, v in zip(scores.graph.edges, scores.importance().tolist(), strict=True) if v >= cut)


def test_bfloat16_agrees_with_float32(induction, induction_bf16, zoo_data):
    assert next(induction_bf16.parameters()).dtype == torch.bfloat16
    graph = Graph.from_model(induction)
    task32 = task_from_data(induction, zoo_data, batch_size=BATCH)
    task16 = task_from_data(induction_bf16, zoo_data, batch_size=BATCH)
    assert task16.ablated(induction_bf16, graph).dtype == torch.bfloat16  # ablation values in the model's dtype
    e32, e16 = CircuitEvaluator(induction, graph, task32), CircuitEvaluator(induction_bf16, graph, task16)
    for a, b in ((e32.full, e16.full), (e32.empty, e16.empty)):
        assert abs(a - b) <= BF16_METRIC * abs(a)
    for name in BF16_METHODS:
        options = BF16_OPTIONS.get(name, {})
        s32 = discover(induction, graph, task32, name, **options)
        s16 = discover(induction_bf16, graph, task16, name, **options)
        assert s16.scores.dtype == torch.float32  # scores accumulate in float32
        worst = float((s32.scores - s16.scores).abs().max())
        assert worst <= BF16_SCORES * float(s32.scores.abs().max()), f"{name}: bf16 differs by {worst:.3g}"
        assert _important(s32) == _important(s16), name


def _cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (torch.cuda.is_available() is False); runs wherever one is present")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_cuda_micro_batched_and_on_device(induction, zoo_data, dtype):
    _cuda_or_skip()
    model = mechwork.load("zoo:induction", device="cuda", dtype=dtype)
    graph = Graph.from_model(model)
    task = task_from_data(model, zoo_data, batch_size=BATCH)
    assert task.ablated(model, graph).device.type == "cuda"
    assert task.ablated(model, graph).dtype == dtype
    cpu_task = task_from_data(induction, zoo_data)
    tolerance = TOLERANCE * 10 if dtype == torch.float32 else BF16_SCORES
    for name in BF16_METHODS:
        on_gpu = discover(model, graph, task, name, **QUICK.get(name, {}))
        on_cpu = discover(induction, graph, cpu_task, name, **QUICK.get(name, {}))
        assert on_gpu.scores.dtype == torch.float32
        assert_same(on_cpu.scores, on_gpu.scores.cpu(), f"{name} on CUDA ({dtype})", tolerance)
    evaluator = CircuitEvaluator(model, graph, task)
    assert abs(evaluator.full - CircuitEvaluator(induction, graph, cpu_task).full) <= 0.01 * abs(evaluator.full)


# ---- where batch_size is set: the CLI and experiment files -------------------------------------------
def test_cli_and_experiment_batch_size(tmp_path):
    from mechwork.cli._main import build_parser
    from mechwork.experiments import ExperimentError, parse_experiment

    parser = build_parser()
    args = parser.parse_args(["discover", "--model", "zoo:induction", "--method", "eap", "--out", "c.json",
                              "--batch-size", "3"])
    assert args.batch_size == 3
    assert parser.parse_args(["bench", "--out", "b", "--batch-size", "4"]).batch_size == 4
    assert parser.parse_args(["bench", "--out", "b"]).batch_size is None
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--out", "b", "--batch-size", "0"])
    text = '[model]\nspec = "zoo:induction"\n[task]\nzoo = "induction"\nbatch_size = {}\n' \
           '[[step]]\nkind = "discover"\nmethod = "eap"\n'
    (tmp_path / "ok.toml").write_text(text.format(3))
    assert parse_experiment(tmp_path / "ok.toml").task["batch_size"] == 3
    (tmp_path / "bad.toml").write_text(text.format(0))
    with pytest.raises(ExperimentError, match="batch_size"):
        parse_experiment(tmp_path / "bad.toml")


def test_find_circuit_and_verify_micro_batched(model, data):
    from mechwork.discovery import CircuitRequest, find_circuit, verify

    request = CircuitRequest("top-n", 3.0)
    one = find_circuit(model, data, "eap", request=request)
    micro = find_circuit(model, data, "eap", request=request, batch_size=BATCH)
    assert micro.provenance["batch_size"] == BATCH and "batch_size" not in one.provenance
    assert one.selected == micro.selected
    assert_same(one.faithfulness["curve"]["faithfulness"], micro.faithfulness["curve"]["faithfulness"], "curve", 1e-4)
    assert verify(micro, model).ok  # re-derived by micro-batches too
