"""Discovery methods' values against references that share none of their code, and each reference
catching a deliberately broken variant of its method with the same assertion.

* EAP-IG: an integrated-gradients Riemann sum written with plain autograd and TransformerLens hooks.
* node patching: TransformerLens's own ``patching`` module.
* learned mask: the planted circuits of ``zoo:induction`` and ``zoo:lookup`` (edge ROC AUC).
"""

import pytest
import torch
from transformer_lens import patching

import mechwork
from mechwork._nodes import edge, head_node, mlp_node
from mechwork.discovery import DiscoveryTask, EdgeScores, discover, ground_truth_scores, task_from_data
from mechwork.discovery import eap_ig as eap_ig_module
from mechwork.discovery import node_patching as node_patching_module
from mechwork.graph import Graph


def _checked(broken: bool, check) -> None:
    """Run ``check``: it must pass for the method and raise its AssertionError for a broken variant."""
    if broken:
        with pytest.raises(AssertionError):
            check()
    else:
        check()


def _logit_diff(answers, wrong, position):
    """The task metric by hand: mean of logit[answer] - logit[wrong] at ``position``."""

    def metric(logits):
        at = logits[:, position]
        return (at.gather(1, answers[:, None]) - at.gather(1, wrong[:, None])).mean()

    return metric


def _case(request, name):
    """(model, clean, corrupted, answers, wrong, position) of the tiny random GPT-2 or ``zoo:induction``."""
    if name == "tiny":
        clean, corrupted = request.getfixturevalue("tiny_pair")
        return request.getfixturevalue("tiny"), clean, corrupted, clean[:, 1], clean[:, 2], -1
    d = request.getfixturevalue("induction_data")
    return request.getfixturevalue("induction"), d.clean, d.corrupted, d.answers, d.wrong, d.position


# ---- EAP-IG ------------------------------------------------------------------------------------


@torch.no_grad()
def _source_outputs(model, tokens):
    """Every source node's output by plain hooks: embeddings, per-head ``hook_result``, ``hook_mlp_out``."""
    store = {}

    def keep(key):
        return lambda a, hook: store.__setitem__(key, a.detach().clone())

    hooks = [("hook_embed", keep("embed")), ("hook_pos_embed", keep("pos"))]
    for layer in range(model.cfg.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_result", keep(("result", layer))),
                  (f"blocks.{layer}.hook_mlp_out", keep(("mlp", layer)))]
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    out = {"input": store["embed"] + store["pos"]}
    for layer in range(model.cfg.n_layers):
        out.update({head_node(layer, h): store[("result", layer)][:, :, h] for h in range(model.cfg.n_heads)})
        out[mlp_node(layer)] = store[("mlp", layer)]
    return out, store["embed"]


def _integrated_gradients(model, clean, corrupted, metric, alphas):
    """EAP-IG by its definition: score(u->v) = sum over the batch (per position) of
    (out_u(corrupted) - out_u(clean)) . mean_alpha dM/dx_v at the input ``corrupted + alpha (clean - corrupted)``
    (token embeddings interpolated; the positional embeddings are the same in both runs).
    dM/dx_v is the gradient with respect to a zero probe added at v's input hook (q/k/v input, MLP input,
    final residual), so it is the gradient through v alone. Returns {edge: [pos] scores}."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    clean_out, _ = _source_outputs(model, clean)
    corrupted_out, corrupted_embed = _source_outputs(model, corrupted)
    mean_grad = {}
    for alpha in alphas:
        probes = {}

        def probe(key, probes=probes):
            def hook(a, hook):
                probes[key] = torch.zeros_like(a, requires_grad=True)
                return a + probes[key]

            return hook

        hooks = [("hook_embed", lambda a, hook, alpha=alpha: corrupted_embed + alpha * (a - corrupted_embed))]
        for layer in range(n_layers):
            hooks += [(f"blocks.{layer}.hook_{port}_input", probe((layer, port))) for port in "qkv"]
            hooks.append((f"blocks.{layer}.hook_mlp_in", probe((layer, "mlp"))))
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", probe("logits")))
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            value = metric(model(clean))
            grads = torch.autograd.grad(value, list(probes.values()))
        for key, g in zip(probes, grads, strict=True):
            mean_grad[key] = mean_grad.get(key, 0.0) + g / len(alphas)

    def score(src, grad):
        return ((corrupted_out[src] - clean_out[src]) * grad).sum(dim=(0, 2))

    scores, upstream = {}, ["input"]
    for layer in range(n_layers):
        heads = [head_node(layer, h) for h in range(n_heads)]
        for h, dst in enumerate(heads):
            for port in "qkv":
                scores.update({edge(u, dst, port): score(u, mean_grad[(layer, port)][:, :, h]) for u in upstream})
        upstream = upstream + heads
        scores.update({edge(u, mlp_node(layer)): score(u, mean_grad[(layer, "mlp")]) for u in upstream})
        upstream = upstream + [mlp_node(layer)]
    scores.update({edge(u, "logits"): score(u, mean_grad["logits"]) for u in upstream})
    return scores


def _as_vector(graph: Graph, reference: dict) -> torch.Tensor:
    if graph.positions is None:
        return torch.stack([reference[e].sum() for e in graph.edges])
    return torch.stack([reference[name.rsplit("@", 1)[0]][int(name.rsplit("@", 1)[1])] for name in graph.edges])


def _assert_scores_close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 1e-3, "the reference is all (near) zero: nothing would be compared"
    torch.testing.assert_close(ours, expected.float(), atol=1e-5 * scale, rtol=1e-4)


STEPS = 5
RULES = {  # the integration points alpha
    "right": tuple(k / STEPS for k in range(1, STEPS + 1)),  # eap_ig.py's documented rule: k/steps, k = 1..steps
    "left": tuple(k / STEPS for k in range(STEPS)),  # k = 0..steps-1, as hannamw/EAP-IG's get_scores_eap_ig
}
_REFERENCES: dict = {}


def _reference(request, name, rule):
    """The IG reference of one test case, computed once per module run."""
    if (name, rule) not in _REFERENCES:
        model, clean, corrupted, answers, wrong, position = _case(request, name)
        _REFERENCES[name, rule] = _integrated_gradients(model, clean, corrupted, _logit_diff(answers, wrong, position),
                                                        RULES[rule])
    return _REFERENCES[name, rule]


def _no_interpolation(monkeypatch, clean_point):
    """Broken EAP-IG: every integration point is the clean input (which is EAP, scaled by 1)."""
    real = eap_ig_module.edge_attributions

    def every_point_clean(model, graph, task, points, *args, **kwargs):
        return real(model, graph, task, [clean_point] * len(points), *args, **kwargs)

    monkeypatch.setattr(eap_ig_module, "edge_attributions", every_point_clean)


@pytest.mark.parametrize("variant", ["eap-ig", "broken: no interpolation"])
@pytest.mark.parametrize("name,by_position", [("tiny", False), ("tiny", True), ("induction", False)])
def test_eap_ig_equals_an_independent_riemann_sum(request, monkeypatch, name, by_position, variant):
    model, clean, corrupted, answers, wrong, position = _case(request, name)
    graph = Graph.from_model(model, positions=clean.shape[1] if by_position else None)
    task = DiscoveryTask(clean, corrupted, mechwork.metrics.LogitDiff(position=position, answers=answers, wrong=wrong))
    expected = _as_vector(graph, _reference(request, name, "right"))
    if variant != "eap-ig":
        clean_out, _ = _source_outputs(model, clean)
        _no_interpolation(monkeypatch, clean_out["input"])
    ours = discover(model, graph, task, "eap-ig", steps=STEPS).scores
    _checked(variant != "eap-ig", lambda: _assert_scores_close(ours, expected))
    if variant == "eap-ig" and name == "tiny":
        # The comparison resolves the integration points too: the left Riemann sum does not pass it. (Not on
        # zoo:induction, whose gradients at the corrupted and the clean end agree, so both sums do.)
        left = _as_vector(graph, _reference(request, name, "left"))
        _checked(True, lambda: _assert_scores_close(ours, left))


# ---- node patching -----------------------------------------------------------------------------


def _whole_activation(corrupted_activation, index, clean_activation):
    """A TransformerLens patch setter for index = [layer]: the whole activation, every position."""
    corrupted_activation[...] = clean_activation
    return corrupted_activation


def _forced(monkeypatch, **override):
    """Broken node patching: ``activation_patching`` called with a wrong site or direction."""
    real = node_patching_module.activation_patching

    def wrong(model, clean, corrupted, metric, site, **kwargs):
        site = override.get("site", {}).get(site, site)
        return real(model, clean, corrupted, metric, site, **{**kwargs, **override.get("kwargs", {})})

    monkeypatch.setattr(node_patching_module, "activation_patching", wrong)


NODE_VARIANTS = {
    "node-patching": {},
    "broken: denoising direction": {"kwargs": {"direction": "denoise"}},
    "broken: hook_q instead of hook_z": {"site": {"z": "q"}},
    "broken: attn_out instead of mlp_out": {"site": {"mlp_out": "attn_out"}},
}


@pytest.mark.parametrize("variant", list(NODE_VARIANTS))
@pytest.mark.parametrize("name", ["tiny", "induction"])
def test_node_patching_equals_transformerlens(request, monkeypatch, name, variant):
    model, clean, corrupted, answers, wrong, position = _case(request, name)
    metric = _logit_diff(answers, wrong, position)
    with torch.no_grad():
        base = float(metric(model(clean)))
        _, corrupted_cache = model.run_with_cache(corrupted)
        # The clean run with one corrupted activation patched in (noising): TransformerLens's functions with
        # the roles of the two prompt sets swapped.
        heads = patching.get_act_patch_attn_head_out_all_pos(model, clean, corrupted_cache, metric)
        mlps = patching.generic_activation_patch(model, clean, corrupted_cache, metric, _whole_activation,
                                                 "mlp_out", index_axis_names=("layer",))
    expected = {head_node(layer, h): float(heads[layer, h]) - base
                for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    expected.update({mlp_node(layer): float(mlps[layer]) - base for layer in range(model.cfg.n_layers)})
    graph = Graph.from_model(model)
    task = DiscoveryTask(clean, corrupted, mechwork.metrics.LogitDiff(position=position, answers=answers, wrong=wrong))
    _forced(monkeypatch, **NODE_VARIANTS[variant])
    result = discover(model, graph, task, "node-patching")
    nodes = sorted(expected)

    def check():
        ours = torch.tensor([result.node_scores[n] for n in nodes])
        reference = torch.tensor([expected[n] for n in nodes])
        scale = float(reference.abs().max())
        assert scale > 1e-4, "the reference is all (near) zero: nothing would be compared"
        atol = max(1e-6, 1e-5 * scale)  # float32 noise of the metric
        torch.testing.assert_close(ours, reference, atol=atol, rtol=1e-3)
        # An edge scores the smaller magnitude of its two ends; the input and the logits always matter.
        magnitude = {n: abs(v) for n, v in expected.items()}
        scores = result.by_edge()
        for e, value in scores.items():
            src, dst = e.split("->")
            dst = dst.rsplit(".", 1)[0] if dst[-2:] in (".q", ".k", ".v") else dst
            ends = [magnitude[n] for n in (src, dst) if n in magnitude]
            if ends:
                assert value == pytest.approx(min(ends), rel=1e-3, abs=atol), e
        assert scores["input->logits"] >= max(scores.values())

    _checked(variant != "node-patching", check)


# ---- learned mask ------------------------------------------------------------------------------

AUC_THRESHOLD = 0.95  # measured: 1.000 on both circuits (8 prompts); the untrained mask scores 0.500
_TRAINED: dict = {}


def _learned_mask(model, name, **options):
    """The learned mask on 8 prompts of the zoo task (the default run is trained once per module)."""
    key = (name, tuple(sorted(options.items())))
    if key not in _TRAINED:
        data = mechwork.zoo.get_entry(name).task.data(8, seed=4)
        _TRAINED[key] = discover(model, Graph.from_model(model), task_from_data(model, data), "learned-mask", **options)
    return _TRAINED[key]


@pytest.mark.parametrize("variant", ["learned-mask", "broken: untrained (steps=0)", "broken: scores shuffled"])
@pytest.mark.parametrize("name", ["induction", "lookup"])
def test_learned_mask_recovers_the_planted_circuit(request, name, variant):
    model = request.getfixturevalue(name)
    result = _learned_mask(model, name, **({"steps": 0} if "untrained" in variant else {}))
    graph = result.graph
    if "shuffled" in variant:  # the learned scores handed to the wrong edges (a fixed permutation)
        order = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(0))
        result = EdgeScores(graph, result.scores[order], "learned-mask", ranking=result.ranking)
    auc = ground_truth_scores(result, mechwork.zoo.get_entry(name).ground_truth())["edge_roc_auc"]

    def check():
        assert auc >= AUC_THRESHOLD, f"{variant} on zoo:{name}: edge ROC AUC {auc:.3f}"

    _checked(variant != "learned-mask", check)
