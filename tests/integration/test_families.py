"""Every model family the installed TransformerLens bridge boots, each on a tiny random-weight checkpoint
(``tests/families.py``): logits against plain Hugging Face, the structure description against the
family's config, caching against ``run_with_cache``, resid_pre patching against a brute-force loop of
plain TransformerLens hooks, and the edge graph against brute-force edge ablation -- or a refusal that
names the architecture and what is missing.

These tests back the columns of ``docs/architectures.md`` (``mechwork architectures``).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import mechwork
from mechwork.cli._architectures import brute_force_resid_pre  # plain TL hooks only: the CLI's table uses it too
from mechwork.discovery import DiscoveryTask, discover, methods, top_n
from mechwork.graph import Graph, ablation_values, clean_start, masked_forward_from, run_circuit
from mechwork.hooks import activation_patching, cache_activations
from mechwork.hooks._runner import embed, run_from
from mechwork.models import SlowPathWarning, UnsupportedModelError, structure_of
from mechwork.models._edge_access import Access
from tests.edge_reference import all_edges, run_with_edges_ablated
from tests.edge_reference_passes import run_with_edges_ablated_by_passes
from tests.families import BRIDGE_LACKS, BRIDGE_UNFAITHFUL, EXPECTED, family_names, get_family, prompts, tiny_family

FAMILIES = family_names()

# What mechwork's edge graph does not handle yet: when one is implemented, drop it here and the families
# it covers must then build an exact graph. (Empty: every family the bridge boots has one.)
GRAPH_CANNOT: dict = {}
BRIDGE_GAP_TEXT = {"result": "per-head result hook", "qkv": "q/k/v input hooks", "mlp_in": "MLP-input hook"}
# Where the bridge lacks an edge hook, mechwork computes it (models/_edge_access.py): head outputs and
# inputs always; the MLP input in a parallel block whose MLP shares ln1 (GPT-J, Phi, Falcon). In a
# sequential block whose residual bypasses the pre-MLP norm (Bloom), ln2's own input hook serves.
MECHWORK_COMPUTES = {"result": lambda name: True, "qkv": lambda name: True,
                     "mlp_in": lambda name: EXPECTED[name].layout is mechwork.models.BlockLayout.PARALLEL}
MLP_NORM_INPUT = {"bloom"}

# TransformerLens 4.3.0's BloomBlockBridge.forward never calls _maybe_inject_start_residual, so
# bridge(resid, start_at_layer=l) does not resume at block l: it runs every block on resid taken as input
# embeddings (through Bloom's embedding LayerNorm). Recorded as structure_of(model).start_at_layer_exact =
# False (checked below); mechwork's runner then puts resid at block l's input itself (hooks/_runner.py).


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _expected_gaps(name: str) -> list[str]:
    gaps = [text for text, applies in GRAPH_CANNOT.items() if applies(name)]
    served = {"mlp_in"} if name in MLP_NORM_INPUT else set()
    return gaps + [BRIDGE_GAP_TEXT[k] for k in sorted(BRIDGE_LACKS.get(name, ()))
                   if not MECHWORK_COMPUTES[k](name) and k not in served]


def _metric(clean):
    return mechwork.metrics.LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def test_every_family_the_bridge_lists_is_covered():
    from transformer_lens.tools.model_registry import HF_SUPPORTED_ARCHITECTURES

    covered = {get_family(n).architecture for n in FAMILIES}
    assert covered <= set(HF_SUPPORTED_ARCHITECTURES)
    assert set(FAMILIES) == set(EXPECTED) and len(FAMILIES) == 18


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_equal_hugging_face(name, root):
    tiny = tiny_family(name, root)
    clean, _ = prompts()
    hf = AutoModelForCausalLM.from_pretrained(tiny.folder).eval()
    with torch.no_grad():
        ours, theirs = tiny.model(clean), hf(clean).logits
    assert theirs.std() > 0.3  # weights at a scale where every layer matters
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")  # resuming non-GPT-2 families
@pytest.mark.parametrize("name", FAMILIES)
def test_logits_at_one_position_unembed_that_position_alone(name, root):
    """``run_from`` at a position equals the full run's logits there, an edit of the final residual
    included (it must run before the run is cut at the final residual), and unembeds one position only."""
    model = tiny_family(name, root).model
    clean, _ = prompts()
    last = model.cfg.n_layers - 1
    shift = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    edit = (f"blocks.{last}.hook_resid_post", lambda act, hook: act + shift)
    unembedded = []
    spy = ("unembed.hook_in", lambda act, hook: unembedded.append(act.shape[1]))
    with torch.no_grad():
        resid = embed(model, clean)
        at_position = run_from(model, resid, 0, position=3, fwd_hooks=[edit, spy])
        full = model.run_with_hooks(clean, fwd_hooks=[edit])
    assert unembedded == [1]
    torch.testing.assert_close(at_position, full[:, 3], atol=1e-5, rtol=1e-5)


def _hf_kv_heads(config) -> int:
    if getattr(config, "multi_query", False):  # Falcon-7B layout
        return 1
    for key in ("num_key_value_heads", "num_kv_heads"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return int(config.num_attention_heads)


@pytest.mark.parametrize("name", FAMILIES)
def test_structure_matches_the_family(name, root):
    tiny = tiny_family(name, root)
    model, want, lacks = tiny.model, EXPECTED[name], BRIDGE_LACKS.get(name, frozenset())
    s = structure_of(model)
    config = get_family(name).config()
    assert s.architecture == get_family(name).architecture
    assert (s.layout, s.norm, s.mlp, s.positions) == (want.layout, want.norm, want.mlp, want.positions)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model) == (2, 4, want.n_kv_heads, 32)
    assert want.n_kv_heads == _hf_kv_heads(config)
    assert s.attn_out_norm == want.attn_out_norm
    assert (s.head_result_hook, s.head_input_hooks, s.mlp_input_hook) == (
        "result" not in lacks, "qkv" not in lacks, "mlp_in" not in lacks)
    # the bridge agrees: load switched on exactly the flags it could, and refuses the others itself
    assert (model.cfg.use_attn_result, model.cfg.use_split_qkv_input) == (s.head_result_hook, s.head_input_hooks)
    if not s.head_result_hook:
        with pytest.raises(NotImplementedError, match="use_attn_result"):
            model.set_use_attn_result(True)
    if not s.head_input_hooks:
        with pytest.raises(NotImplementedError, match="use_split_qkv_input"):
            model.set_use_split_qkv_input(True)
    lacks = lacks | BRIDGE_UNFAITHFUL.get(name, frozenset())
    routes = {k: (Access.BRIDGE if k not in lacks else Access.COMPUTED if MECHWORK_COMPUTES[k](name) else Access.NONE)
              for k in BRIDGE_GAP_TEXT}
    if name in MLP_NORM_INPUT:
        routes["mlp_in"] = Access.NORM_INPUT
    assert (s.edge_access.head_outputs, s.edge_access.head_inputs, s.edge_access.mlp_inputs) == (
        routes["result"], routes["qkv"], routes["mlp_in"])
    _check_mlp_input_hook_by_effect(model, s.mlp_input_hook)
    _check_start_at_layer(model, exact=s.start_at_layer_exact)
    if s.head_input_hooks:
        _check_split_query_input(model, faithful="qkv" not in BRIDGE_UNFAITHFUL.get(name, frozenset()))
    if s.head_result_hook:
        _check_head_writes_add_up(model, additive=not s.attn_out_norm)


def _check_mlp_input_hook_by_effect(model, live: bool) -> None:
    """A random edit at hook_mlp_in changes hook_mlp_out iff the hook reaches the MLP."""
    clean, _ = prompts()
    was_on = bool(model.cfg.use_hook_mlp_in)
    model.set_use_hook_mlp_in(True)
    seen = {}
    delta = torch.randn(clean.shape + (model.cfg.d_model,), generator=torch.Generator().manual_seed(0))
    edit = ("blocks.0.hook_mlp_in", lambda a, hook: a + delta)
    keep = ("blocks.0.hook_mlp_out", lambda a, hook: seen.__setitem__("out", a))
    try:
        with torch.no_grad():
            model.run_with_hooks(clean, fwd_hooks=[keep])
            before = seen["out"]
            model.run_with_hooks(clean, fwd_hooks=[edit, keep])
    finally:
        model.set_use_hook_mlp_in(was_on)
    assert bool((seen["out"] - before).abs().max() > 1e-2) == live


def _check_split_query_input(model, faithful: bool) -> None:
    """Query head 1 of block 0 fed the corrupted prompts' residual through the bridge's own per-head copy
    computes the corrupted run's query there iff the bridge's split inputs are faithful."""
    clean, corrupted = prompts()
    seen = {}
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q"])

        def feed(act, hook):
            act = act.clone()
            act[:, :, 1] = cache["blocks.0.hook_resid_pre"]
            return act

        was_on = bool(model.cfg.use_split_qkv_input)
        model.set_use_split_qkv_input(True)
        try:
            model.run_with_hooks(clean, fwd_hooks=[("blocks.0.hook_q_input", feed),
                                                   ("blocks.0.attn.hook_q", lambda a, hook: seen.__setitem__("q", a))])
        finally:
            model.set_use_split_qkv_input(was_on)
    assert torch.allclose(seen["q"][:, :, 1], cache["blocks.0.attn.hook_q"][:, :, 1], atol=1e-5) == faithful


def _check_start_at_layer(model, exact: bool) -> None:
    """The bridge's start_at_layer from block 1's residual gives the full run's logits iff declared exact."""
    clean, _ = prompts()
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean, names_filter="blocks.1.hook_resid_pre")
        resumed = model(cache["blocks.1.hook_resid_pre"], start_at_layer=1)
    assert torch.allclose(resumed, logits, atol=1e-5) == exact


def _check_head_writes_add_up(model, additive: bool) -> None:
    """Heads' results (plus the output bias) sum to what attention adds to the residual stream iff additive."""
    clean, _ = prompts()
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    b_O = getattr(model.blocks[0].attn, "b_O", None)
    total = cache["blocks.0.attn.hook_result"].sum(2) + (b_O if b_O is not None else 0.0)
    # Bloom's bridge lists hook_attn_out but never fires it: read the write off resid_mid - resid_pre
    if "blocks.0.hook_resid_mid" in cache:
        written = cache["blocks.0.hook_resid_mid"] - cache["blocks.0.hook_resid_pre"]
    else:  # parallel blocks have no resid_mid
        written = cache["blocks.0.hook_attn_out"]
    assert torch.allclose(total, written, atol=1e-5) == additive


@pytest.mark.parametrize("name", FAMILIES)
def test_caching_equals_run_with_cache(name, root):
    model = tiny_family(name, root).model
    clean, _ = prompts()
    with torch.no_grad():
        logits, ours = cache_activations(model, clean, ["blocks.*.hook_resid_pre", "blocks.*.attn.hook_z"])
        tl_logits, theirs = model.run_with_cache(clean)
    names = [f"blocks.{layer}.{hook}" for layer in range(2) for hook in ("hook_resid_pre", "attn.hook_z")]
    assert sorted(ours) == sorted(names)
    assert ours["blocks.1.attn.hook_z"].shape == (2, 6, 4, structure_of(model).d_head)
    for hook in names:
        torch.testing.assert_close(ours[hook], theirs[hook], atol=0, rtol=0)
    torch.testing.assert_close(logits, tl_logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_resid_pre_patching_equals_brute_force(name, root):
    """Non-GPT-2 families resume through start_at_layer and say so once (SlowPathWarning); GPT-2 does not."""
    model = tiny_family(name, root).model
    clean, corrupted = prompts()
    metric = _metric(clean)
    model.__dict__.pop("_mechwork_slow_paths", None)
    if structure_of(model).resumable_blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("error", SlowPathWarning)
            ours = activation_patching(model, clean, corrupted, metric, "resid_pre", per_position=True)
    else:
        with pytest.warns(SlowPathWarning, match="start_at_layer"):
            ours = activation_patching(model, clean, corrupted, metric, "resid_pre", per_position=True)
    reference = brute_force_resid_pre(model, clean, corrupted, metric)
    assert ours.dims == ("layer", "pos") and ours.values.shape == (2, 6)
    assert float(reference.max() - reference.min()) > 0.05  # the sweep is not flat
    torch.testing.assert_close(ours.values.float(), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")  # resuming rotary models (see above)
@pytest.mark.parametrize("name", FAMILIES)
def test_edge_graph_is_exact_or_refused_by_name(name, root):
    model = tiny_family(name, root).model
    gaps = _expected_gaps(name)
    if gaps:
        with pytest.raises(UnsupportedModelError, match=re.escape(get_family(name).architecture)) as refused:
            Graph.from_model(model)
        for gap in gaps:
            assert gap in str(refused.value), gap
        return
    graph = Graph.from_model(model)
    parallel = EXPECTED[name].layout is mechwork.models.BlockLayout.PARALLEL
    assert set(graph.edges) == set(all_edges(2, 4, parallel=parallel, n_kv_heads=EXPECTED[name].n_kv_heads))
    assert len(graph.edges) == graph.n_edges
    clean, corrupted = prompts()
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    drop = torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(3)) < 0.5
    removed = {graph.edges[i] for i in torch.nonzero(drop).flatten().tolist()}
    with torch.no_grad():
        torch.testing.assert_close(run_circuit(model, graph, clean, graph.full_mask(1.0), ablated), model(clean),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_circuit(model, graph, clean, graph.full_mask(0.0), ablated),
                                   model(corrupted), atol=1e-4, rtol=1e-4)
        ours = run_circuit(model, graph, clean, (~drop).float(), ablated)
    # two independent references: repeated plain-hook passes (any family), and where the bridge has every
    # edge hook and heads add to the residual stream, one pass that edits them directly
    reference = run_with_edges_ablated_by_passes(model, clean, corrupted, removed)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    if not BRIDGE_LACKS.get(name) and not EXPECTED[name].attn_out_norm:
        torch.testing.assert_close(run_with_edges_ablated(model, clean, corrupted, removed), reference,
                                   atol=1e-4, rtol=1e-4)
    assert (reference - model(clean)).abs().max() > 1e-2  # the random circuit changes the output
    # resuming at block 1 from the clean run (ACDC's trials) gives the same circuit run when nothing below is
    # ablated: the bridge's start_at_layer reruns block 0 on the injected residual, and a hook recording node
    # outputs there kept those throwaway values (wrong by ~2 on Llama before hooks.hooks_from)
    upper = (~drop | (graph.destination_layers < 1)).float()
    with torch.no_grad():
        start = clean_start(model, graph, embed(model, clean))
        torch.testing.assert_close(masked_forward_from(model, graph, start, 1, upper, ablated),
                                   run_circuit(model, graph, clean, upper, ablated), atol=1e-4, rtol=1e-4)


GRAPH_FAMILIES = [n for n in FAMILIES if not _expected_gaps(n)]


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
@pytest.mark.parametrize("method", [m.name for m in methods()])
@pytest.mark.parametrize("name", GRAPH_FAMILIES)
def test_every_method_runs_and_its_circuit_is_what_brute_force_computes(name, method, root):
    """On each family with a graph: scores for exactly the graph's edges, and the top quarter as a circuit
    gives, through the engine, the logits brute-force TL hooks give."""
    model = tiny_family(name, root).model
    clean, corrupted = prompts()
    graph = Graph.from_model(model)
    options = {"steps": 20} if method == "learned-mask" else {}
    scores = discover(model, graph, DiscoveryTask(clean, corrupted, _metric(clean)), method, **options)
    assert scores.scores.shape == (graph.n_edges,) and bool(torch.isfinite(scores.scores).all())
    kept = set(top_n(scores, graph.n_edges // 4))
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        ours = run_circuit(model, graph, clean, graph.mask_of(kept), ablated)
    reference = run_with_edges_ablated_by_passes(model, clean, corrupted, set(graph.edges) - kept)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_the_architecture_table_is_produced_by_running_the_checks(tmp_path, capsys):
    from mechwork.cli import main

    out = tmp_path / "architectures.md"
    assert main(["architectures", "--family", "gpt2", "--family", "gptj", "--family", "gemma2", "--out",
                 str(out)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in out.read_text().splitlines() if line.startswith("| g")}
    assert set(rows) == {"gpt2", "gptj", "gemma2"}
    assert rows["gpt2"].count("✅") == 4 and "❌" not in rows["gpt2"] and "computed by mechwork" not in rows["gpt2"]
    assert rows["gptj"].count("✅") == 4 and "computed by mechwork: head outputs from hook_z" in rows["gptj"]
    assert rows["gemma2"].count("✅") == 4 and "❌" not in rows["gemma2"]
    assert "test_families.py::test_caching_equals_run_with_cache" in out.read_text()
    assert main(["architectures", "--family", "gpt5"]) == 2
    assert "unknown family ['gpt5']" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
@pytest.mark.parametrize("name", ["gpt2", "gpt_neo", "gptj", "opt"])
def test_result_site_patching_equals_brute_force(name, root):
    """Head-result patching where the bridge has hook_result (GPT-2) and where it has none (mechwork patches
    hook_z, which moves each head's result identically), against a brute-force loop of plain hook_z patches."""
    model = tiny_family(name, root).model
    clean, corrupted = prompts()
    metric = _metric(clean)
    ours = activation_patching(model, clean, corrupted, metric, "result", direction="noise").values
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n.endswith("attn.hook_z"))
        reference = torch.zeros(2, 4)
        for layer in range(2):
            for head in range(4):
                def patch(z, hook, layer=layer, head=head):
                    z = z.clone()
                    z[:, :, head] = cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
                    return z
                logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
                reference[layer, head] = metric.score(logits[:, -1])
    assert float(reference.max() - reference.min()) > 1e-2
    torch.testing.assert_close(ours.float(), reference, atol=1e-4, rtol=1e-4)
