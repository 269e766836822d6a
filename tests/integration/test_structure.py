"""The model-structure description: derived from the booted bridge, and every decision it drives
(which fast path applies, whether the edge graph describes the model) is declared, never a silent
fallback."""

import dataclasses
import re

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

import mechwork
from mechwork.graph import Graph
from mechwork.hooks import activation_patching
from mechwork.models import (
    BlockLayout,
    MLPKind,
    NormKind,
    PositionKind,
    SlowPathWarning,
    UnsupportedModelError,
    _structure,
    structure_of,
)
from mechwork.models._tokenizer import word_level_tokenizer


def _save(model, folder):
    model.save_pretrained(folder)
    word_level_tokenizer([f"w{i}" for i in range(40)], "w0").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16, use_parallel_residual=True)
    return mechwork.load(_save(GPTNeoXForCausalLM(cfg), tmp_path_factory.mktemp("neox")))


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16)
    return mechwork.load(_save(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("llama")))


def test_gpt2_structure(tiny):
    s = structure_of(tiny)
    assert (s.architecture, s.layout, s.norm, s.mlp, s.positions) == (
        "GPT2LMHeadModel", BlockLayout.SEQUENTIAL, NormKind.LAYERNORM, MLPKind.DENSE, PositionKind.ABSOLUTE)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.grouped_query) == (3, 4, 4, False)
    assert s.resumable_blocks and s.layer_pieces and s.edge_graph_gaps() == []


def test_parallel_block_model_gets_a_parallel_graph(neox):
    s = structure_of(neox)
    assert s.layout is BlockLayout.PARALLEL and s.positions is PositionKind.ROTARY
    assert Graph.from_model(neox).parallel  # edges and engine: tests/integration/test_parallel_blocks.py


def test_grouped_query_structure_reaches_the_graph(llama_gqa):
    s = structure_of(llama_gqa)
    assert (s.n_heads, s.n_kv_heads, s.norm, s.mlp) == (4, 2, NormKind.RMSNORM, MLPKind.GATED)
    graph = Graph.from_model(llama_gqa)  # k/v destinations are the key/value heads (test_grouped_query.py)
    assert (graph.n_heads, graph.kv_heads, graph.grouped) == (4, 2, True)


def test_a_structure_the_graph_lacks_is_refused_by_name(llama_gqa, monkeypatch):
    from mechwork.models._edge_access import Access, EdgeAccess

    unreachable = EdgeAccess(Access.NONE, Access.BRIDGE, Access.BRIDGE, "the probe could not run")
    s = dataclasses.replace(structure_of(llama_gqa), edge_access=unreachable)
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM.*no per-head result hook.*probe could not run"):
        s.require_edge_graph()


def test_a_model_not_declared_resumable_says_so_once_and_stays_exact(tiny, tiny_pair, tiny_metric, monkeypatch):
    """The blocks-by-hand fast path is chosen by the declared structure; where it does not apply, the
    bridge's start_at_layer gives the same numbers, and the user is told once (not per call)."""
    clean, corrupted = tiny_pair
    fast = activation_patching(tiny, clean, corrupted, tiny_metric, "z").values
    monkeypatch.setattr(_structure, "_RESUMABLE_ARCHITECTURES", frozenset())
    monkeypatch.delitem(tiny.__dict__, "_mechwork_slow_paths", raising=False)
    with pytest.warns(SlowPathWarning, match=re.escape(str(tiny.mechwork_spec)) + r".*start_at_layer") as said:
        slow = activation_patching(tiny, clean, corrupted, tiny_metric, "z").values
        again = activation_patching(tiny, clean, corrupted, tiny_metric, "resid_pre").values
    assert len([w for w in said if issubclass(w.category, SlowPathWarning)]) == 1
    assert again.shape[0] == 3
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
    monkeypatch.delitem(tiny.__dict__, "_mechwork_slow_paths", raising=False)


def test_loading_never_requires_edge_hooks(tiny_dir, tmp_path):
    """GPT-J's bridge has neither per-head results nor q/k/v input copies: it loads, with those flags off
    (and hook_mlp_in, which never reaches its MLP), says so in its structure, and mechwork computes those
    routes itself, so its graph builds; edge_hooks=False loads GPT-2 with every edge hook off."""
    from mechwork.hooks import hook_names
    from mechwork.models._families import build_checkpoint

    gptj = mechwork.load(build_checkpoint("gptj", tmp_path / "gptj"))
    s = structure_of(gptj)
    assert (s.head_result_hook, s.head_input_hooks, s.mlp_input_hook) == (False, False, False)
    assert not (gptj.cfg.use_attn_result or gptj.cfg.use_split_qkv_input or gptj.cfg.use_hook_mlp_in)
    from mechwork.models._edge_access import Access

    access = s.edge_access
    assert (access.head_outputs, access.head_inputs) == (Access.COMPUTED, Access.COMPUTED)
    assert any(e.endswith("->blocks.1.attn.head.0.q") for e in Graph.from_model(gptj).edges)
    plain = mechwork.load(tiny_dir, edge_hooks=False)
    assert not (plain.cfg.use_attn_result or plain.cfg.use_split_qkv_input or plain.cfg.use_hook_mlp_in)
    assert "blocks.0.attn.hook_result" not in hook_names(plain)
    assert structure_of(plain).head_result_hook  # the bridge can give it; it is just off


def test_a_checkpoint_the_bridge_cannot_run_is_refused_by_name(tmp_path):
    """Post-LayerNorm OPT (do_layer_norm_before=False, as OPT-350m) has no final LayerNorm; TransformerLens's OPT
    adapter boots it but its forward fails: mechwork.load says so, naming the checkpoint and architecture."""
    from transformers import OPTConfig, OPTForCausalLM


    cfg = OPTConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                    max_position_embeddings=32, word_embed_proj_dim=32, do_layer_norm_before=False,
                    bos_token_id=0, eos_token_id=0)
    OPTForCausalLM(cfg).save_pretrained(tmp_path)
    word_level_tokenizer([f"w{i}" for i in range(40)], "w0").save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"OPTForCausalLM.*cannot run a forward pass"):
        mechwork.load(tmp_path)
