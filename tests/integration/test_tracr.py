"""tracr programs as zoo models: the converted checkpoint computes what tracr's compiled model computes,
the ground truth read off tracr's craft graph is what brute-force edge ablation finds, and ``exact``
discovery recovers it; bad program files fail with errors naming the file."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mechwork
from mechwork._nodes import head_node, mlp_node
from mechwork.models.zoo._tracr import (
    TracrNotInstalledError,
    TracrProgramError,
    _build,
    _compile,
    compile_file,
    import_program,
    load_program,
)
from mechwork.models.zoo._tracr._verify import mismatches, model_outputs, random_inputs, token_ids, tracr_outputs
from mechwork.models.zoo._tracr._zoo import PREFIX, program_files
from tests.edge_reference import all_edges

pytest.importorskip("tracr", reason="tracr is an optional extra: pip install mechwork[tracr]")

PROGRAMS = [p.stem for p in program_files()]
# Two heads in one layer (padding of heads), an MLP combining them, a categorical output of booleans.
WRITTEN_HERE = '''
from tracr.compiler import lib
from tracr.rasp import rasp

VOCAB = {"p", "q", "r"}
MAX_SEQ_LEN = 6


def program():
    one_back, two_back = lib.shift_by(1, rasp.tokens), lib.shift_by(2, rasp.tokens)
    return rasp.categorical(rasp.SequenceMap(lambda a, b: a == b, one_back, two_back)).named("back_pair")
'''


_COMPILED: dict[tuple[str, str], tuple] = {}


def _compiled(path: str | Path):
    """Each program compiled once per session, keyed by its path and text: tracr compiles in JAX op by op, and
    the first run of a compiled model jit-compiles it, seconds each. Errors are not kept (raised each time)."""
    path = Path(path)
    key = (str(path.resolve()), path.read_text())
    if key not in _COMPILED:
        _COMPILED[key] = compile_file(path)
    return _COMPILED[key]


@pytest.fixture(scope="module", autouse=True)
def compile_once():
    """The zoo builds (in ``built``) and ``import_program`` compile through the same cache as the tests: what
    they compile and check is unchanged, it is only not compiled twice."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_build, "compile_file", _compiled)
        yield


def _program_path(stem: str) -> str:
    return str(next(p for p in program_files() if p.stem == stem))


@pytest.fixture(scope="module", params=PROGRAMS)
def built(request):
    entry = mechwork.zoo.get_entry(PREFIX + request.param)
    folder = mechwork.zoo.ensure_built(entry)
    return request.param, entry, folder, mechwork.load(f"zoo:{entry.name}")


def _round_trip_mismatches(stem_or_path: str, model, n: int = 1000, seed: int = 1) -> tuple[int, int]:
    compiled, scheme = _compiled(stem_or_path)
    inputs = random_inputs(compiled.program, n, seed)
    tracr = tracr_outputs(compiled, inputs)
    bad = mismatches(tracr, model_outputs(model, scheme, token_ids(scheme, compiled.program.bos, inputs)))
    return int(bad.sum()), int(tracr.decided()[:, 1:].sum())


def test_round_trip_every_builtin_program(built):
    """On 1,000 fresh random inputs (not the ones the build checked) the zoo checkpoint's readout equals
    tracr's at every position, and its decoded output wherever the output is decided."""
    stem, _, _, model = built
    bad, decided = _round_trip_mismatches(_program_path(stem), model)
    assert bad == 0 and decided > 1000


def test_round_trip_agrees_with_tracr_apply(built):
    """The batched comparison against ``assembled.apply``, tracr's own one-input entry point."""
    stem, _, _, model = built
    compiled, scheme = _compiled(_program_path(stem))
    for x in random_inputs(compiled.program, 12, seed=2):
        decoded = compiled.assembled.apply([compiled.program.bos, *x]).decoded
        ours = model_outputs(model, scheme, token_ids(scheme, compiled.program.bos, [x]))
        for p in range(1, len(decoded)):
            if compiled.categorical and ours.decided()[0, p]:
                assert str(decoded[p]) == str(compiled.output_values[ours.values[0, p]]), (x, p)
            elif not compiled.categorical:
                assert abs(decoded[p] - ours.values[0, p]) < 1e-4, (x, p)


def test_program_written_in_the_test_round_trips(tmp_path):
    """``import_program`` writes only after its own 1,000-input round trip (which the broken-converter test
    below shows refusing); the two heads of one layer are both in the ground truth."""
    path = tmp_path / "back_pair.py"
    path.write_text(WRITTEN_HERE)
    facts = import_program(path, tmp_path / "out", n_check=1000)
    assert facts["heads"] == 2 and facts["n_inputs"] == 1000 and facts["max_abs_readout_diff"] < 1e-4
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tracr.json"} <= written
    truth = _build.read_record(tmp_path / "out")["ground_truth"]
    assert {head_node(0, 0), head_node(0, 1), mlp_node(0)} <= set(truth["nodes"])


def test_a_converter_that_drops_positions_is_refused(tmp_path, monkeypatch):
    """The round-trip check is what stands between a wrong converter and a written checkpoint."""
    right = _build.to_gpt2

    def without_positions(compiled, scheme):
        model = right(compiled, scheme)
        model.transformer.wpe.weight.data.zero_()
        return model

    monkeypatch.setattr(_build, "to_gpt2", without_positions)
    with pytest.raises(TracrProgramError, match="disagrees with tracr's compiled model"):
        import_program(_program_path("prev_token"), tmp_path / "out", n_check=1000)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no half-written temporary folder


# ---- ground truth against brute force -------------------------------------------------------------------
@torch.no_grad()
def _zero_ablated(model, tokens, ablations: list[set[str]]):
    """Plain TransformerLens hooks: each ablated edge SRC->DST removes SRC's output from DST's input. One
    forward for all the ablation sets: ``tokens`` repeated once per set, each copy ablating its own edges
    (rows of a batch do not interact), so the result is ``[sets, n, pos, vocab]``."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    n, k = len(tokens), len(ablations)
    rows = {e: torch.tensor([float(e in ablated) for ablated in ablations]).repeat_interleave(n)
            for e in set().union(*ablations)}  # [k * n]: 1 where the row's set ablates e
    out: dict = {}

    def minus(dst: str):
        return -sum((rows[e][:, None, None] * out[e.split("->")[0]] for e in rows if e.split("->")[1] == dst),
                    torch.tensor(0.0))

    hooks = [("blocks.0.hook_resid_pre", lambda a, hook: out.__setitem__("input", a))]
    for layer in range(n_layers):
        def heads(a, hook, layer=layer):
            for h in range(n_heads):
                out[head_node(layer, h)] = a[:, :, h]
        hooks.append((f"blocks.{layer}.attn.hook_result", heads))
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook, layer=layer: out.__setitem__(mlp_node(layer), a)))
        for port in "qkv":
            def feed(a, hook, layer=layer, port=port):
                a = a.clone()
                for h in range(n_heads):
                    a[:, :, h] += minus(f"{head_node(layer, h)}.{port}")
                return a
            hooks.append((f"blocks.{layer}.hook_{port}_input", feed))
        hooks.append((f"blocks.{layer}.hook_mlp_in", lambda a, hook, layer=layer: a + minus(mlp_node(layer))))
    hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", lambda a, hook: a + minus("logits")))
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens.repeat(k, 1))
    return logits.reshape(k, n, *logits.shape[1:])


def test_ground_truth_is_what_zero_ablation_finds(built):
    """Zero-ablating any one ground-truth edge (structural ones included: they act where nothing is selected)
    changes the output logits on the task prompts; zero-ablating every other edge at once changes nothing."""
    _, entry, _, model = built
    truth = entry.ground_truth()
    tokens = entry.task.data(64, seed=3).clean
    with torch.no_grad():
        clean = model(tokens)
    planted = truth.edges | truth.structural_edges
    everything = set(all_edges(model.cfg.n_layers, model.cfg.n_heads))
    assert planted <= everything
    singles = sorted(planted)
    # a ground truth missing one edge (the first) is caught: ablating the rest then changes the logits
    rest, missing_one, *each = _zero_ablated(model, tokens, [everything - planted, everything - planted | {singles[0]},
                                                             *({e} for e in singles)])
    assert torch.allclose(rest, clean, atol=1e-4) and not torch.allclose(missing_one, clean, atol=1e-4)
    for e, ablated in zip(singles, each, strict=True):
        assert (ablated - clean).abs().max() > 1e-2, f"ablating {e} changed nothing"


def test_exact_discovery_recovers_the_ground_truth(built):
    """``exact`` with zero ablation: edge ROC AUC >= 0.95 against tracr's ground truth; against a ground
    truth of as many random edges it does not (the assertion can fail)."""
    from mechwork.discovery import discover, ground_truth_scores, task_from_data
    from mechwork.graph import Graph
    from mechwork.models.zoo import CircuitGroundTruth

    _, entry, _, model = built
    graph = Graph.from_model(model)
    scores = discover(model, graph, task_from_data(model, entry.task.data(32, seed=0), ablation="zero"), "exact")
    truth = entry.ground_truth()
    assert ground_truth_scores(scores, truth)["edge_roc_auc"] >= 0.95
    rng = np.random.default_rng(0)
    fake_edges = frozenset(rng.choice(sorted(graph.edges), size=len(truth.edges), replace=False).tolist())
    fake = CircuitGroundTruth(nodes=truth.nodes, edges=fake_edges - truth.edges or fake_edges)
    assert ground_truth_scores(scores, fake)["edge_roc_auc"] < 0.95


@pytest.mark.parametrize("stem", ["hist", "rank"])
def test_first_order_attribution_on_a_staircase(stem):
    """docs/tracr.md: a SelectorWidth head feeds tracr's discretising MLP, a staircase that is flat at every
    clean input. Plain hooks: 0.95 of the head's output into the MLP changes nothing, none of it changes the
    metric by more than half of it. So EAP (the derivative there) scores the four edges acting only through the
    head's output 0, and EAP-IG with 20 steps (not 5 on rank) crosses the staircase and ranks them."""
    from mechwork.discovery import discover, ground_truth_scores, task_from_data
    from mechwork.graph import Graph

    entry = mechwork.zoo.get_entry(PREFIX + stem)
    model = mechwork.load(f"zoo:{entry.name}")
    data = entry.task.data(32, seed=0)
    rows = torch.arange(len(data))

    @torch.no_grad()
    def metric(strength: float) -> torch.Tensor:
        kept = {}
        hooks = [("blocks.0.attn.hook_result", lambda a, hook: kept.__setitem__("head", a[:, :, 0])),
                 ("blocks.0.hook_mlp_in", lambda a, hook: a - (1 - strength) * kept["head"])]
        with model.hooks(fwd_hooks=hooks):
            last = model(data.clean)[:, -1]
        return last[rows, data.answers] - last[rows, data.wrong]

    assert torch.allclose(metric(0.95), metric(1.0), atol=1e-6) and (metric(0.0) - metric(1.0)).abs().min() > 0.5
    graph, truth = Graph.from_model(model), entry.ground_truth()
    task = task_from_data(model, data, ablation="zero")
    eap = {e: float(v) for e, v in zip(graph.edges, discover(model, graph, task, "eap").scores, strict=True)}
    head = "blocks.0.attn.head.0"
    through_head = [f"input->{head}.q", f"input->{head}.k", f"input->{head}.v", f"{head}->blocks.0.mlp"]
    assert set(through_head) <= truth.edges
    assert all(abs(eap[e]) < 1e-6 for e in through_head), eap
    assert eap["input->blocks.0.mlp"] == pytest.approx(-1.0, abs=1e-4)  # Euler: all of f = x . grad f on `one`
    assert ground_truth_scores(discover(model, graph, task, "eap-ig", steps=20), truth)["edge_roc_auc"] >= 0.95


def test_zero_initial_weights_change_no_parameter(monkeypatch):
    """tracr compiled with its own random initialisation (the context manager a no-op) gives the same
    parameters, bit for bit, as with the zero initialisation the importer uses to save compiling."""
    path = _program_path("hist")  # a head and an MLP
    fast, _ = _compiled(path)
    monkeypatch.setattr(_compile, "zero_initial_weights", contextlib.nullcontext)
    slow = _compile.compile_program(load_program(path))
    assert fast.assembled.params.keys() == slow.assembled.params.keys()
    for module, weights in slow.assembled.params.items():
        assert weights.keys() == fast.assembled.params[module].keys()
        for name, value in weights.items():
            assert np.array_equal(np.asarray(value), np.asarray(fast.assembled.params[module][name])), (module, name)


def test_task_corrupted_prompts_change_the_output(built):
    """Per prompt, logit(answer) - logit(wrong) is larger on the clean prompt than on its corrupted one."""
    _, entry, _, model = built
    data = entry.task.data(32, seed=0)
    rows = torch.arange(len(data))

    def per_prompt(tokens):
        with torch.no_grad():
            last = model(tokens)[:, -1]
        return last[rows, data.answers] - last[rows, data.wrong]

    assert (per_prompt(data.clean) > per_prompt(data.corrupted) + 1e-3).all()


# ---- bad program files ---------------------------------------------------------------------------------
HEADER = "from tracr.compiler import lib\nfrom tracr.rasp import rasp\n"
BAD = {
    "missing_names": (HEADER + "VOCAB = {'a'}\n", "does not define program, MAX_SEQ_LEN"),
    "program_raises": (HEADER + "VOCAB = {'a'}\nMAX_SEQ_LEN = 3\ndef program():\n    raise RuntimeError('x')\n",
                       "program\\(\\) raised RuntimeError"),
    "not_an_sop": (HEADER + "VOCAB = {'a'}\nMAX_SEQ_LEN = 3\ndef program():\n    return 3\n", "not a RASP SOp"),
    "bos_in_vocab": (HEADER + "VOCAB = {'a', 'BOS'}\nMAX_SEQ_LEN = 3\ndef program():\n    return rasp.tokens\n",
                     "COMPILER_BOS 'BOS' is also in VOCAB"),
    "tracr_cannot_compile": (
        HEADER + "VOCAB = {1, 2}\nMAX_SEQ_LEN = 3\ndef program():\n    return rasp.numerical(rasp.SequenceMap("
        "lambda x, y: x + y, rasp.numerical(rasp.Map(lambda x: x, rasp.tokens)), rasp.tokens))\n",
        "tracr does not support these RASP expressions"),
    "needs_later_tokens": (HEADER + "VOCAB = {1, 2, 3}\nMAX_SEQ_LEN = 4\ndef program():\n"
                           "    return lib.make_sort_unique(rasp.tokens, rasp.tokens)\n",
                           "fails under causal masking"),
    "output_texts_collide": (HEADER + "VOCAB = {'a', 'b'}\nMAX_SEQ_LEN = 3\ndef program():\n    return "
                             "rasp.categorical(rasp.Map(lambda t: 1 if t == 'a' else '1', rasp.tokens))\n",
                             "have the same text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_program_files_fail_naming_the_file(tmp_path, case):
    source, message = BAD[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    with pytest.raises(TracrProgramError, match=message) as info:
        import_program(path, tmp_path / "out", n_check=50)
    assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_program(tmp_path, capsys):
    from mechwork.cli import main

    path = tmp_path / "empty.py"
    path.write_text("")
    assert main(["zoo", "tracr", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "does not define program, VOCAB, MAX_SEQ_LEN" in capsys.readouterr().err


def test_without_tracr_listing_works_and_building_says_how_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tracr" or m.startswith("tracr.")]:
        monkeypatch.setitem(sys.modules, name, None)
    entries = [e for e in mechwork.zoo.entries() if e.name.startswith(PREFIX)]
    assert len(entries) >= 6 and all(e.kind == "compiled" and e.ground_truth_kind == "circuit" for e in entries)
    with pytest.raises(TracrNotInstalledError, match=r"pip install mechwork\[tracr\]"):
        entries[0].builder(Path(tmp_path))


def test_tracr_entries_are_in_the_leaderboard_and_the_challenges():
    from mechwork.bench._leaderboard import circuit_models
    from mechwork.challenges._registry import builtin_names

    names = {PREFIX + p for p in PROGRAMS}
    assert names <= set(circuit_models())
    assert names <= set(builtin_names())
