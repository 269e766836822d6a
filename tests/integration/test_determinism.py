"""Determinism for a seed: every registered discovery method gives the same scores twice whatever the
global random state, and every seeded random choice (resample ablation, zoo task prompts) repeats for
its seed and changes with it, so the seed is really used.

None of today's methods samples: ACDC and node patching use the corrupted prompts as they are, the
learned mask starts from a fixed logit and trains full-batch. A method that takes a ``seed`` option is
also checked to give different scores for a different seed.
"""

import pytest
import torch

import mechwork
from mechwork.discovery import discover, get_method, methods, task_from_data
from mechwork.graph import Graph
from mechwork.hooks import compile_ablation

# Same code path, a shorter run: determinism does not need the learned mask trained to the end.
CHEAPER = {"learned-mask": {"steps": 20}}


@pytest.fixture(scope="module")
def lookup_task(lookup):
    return Graph.from_model(lookup), task_from_data(lookup, mechwork.zoo.get_entry("lookup").task.data(4, seed=6))


def _run(model, graph, task, method, global_seed, **options):
    torch.manual_seed(global_seed)  # a different global random state for each run
    return discover(model, graph, task, method, **options)


@pytest.mark.parametrize("method", [m.name for m in methods()])
def test_every_method_is_deterministic(lookup, lookup_task, method):
    graph, task = lookup_task
    options = CHEAPER.get(method, {})
    first = _run(lookup, graph, task, method, 0, **options)
    again = _run(lookup, graph, task, method, 1, **options)
    assert torch.equal(first.scores, again.scores), f"{method}: two runs with the same options differ"
    assert first.circuit == again.circuit and first.node_scores == again.node_scores
    assert first.options == again.options
    defaults = get_method(method).options
    if "seed" in defaults:  # a stochastic method: its seed must change what it finds
        seed = options.get("seed", defaults["seed"])
        other = _run(lookup, graph, task, method, 0, **{**options, "seed": seed + 1})
        assert not torch.equal(first.scores, other.scores), f"{method}: the seed option changes nothing"


def test_resample_ablation_repeats_for_its_seed_and_changes_with_it(tiny):
    reference = torch.randint(0, 40, (7, 9), generator=torch.Generator().manual_seed(2))

    def plan(seed: int, global_seed: int):
        torch.manual_seed(global_seed)
        return compile_ablation(tiny, [("blocks.1.attn.hook_z", 2)], "resample", reference=reference, batch=6,
                                seed=seed).values[0]

    first = plan(0, 0)
    assert torch.equal(first, plan(0, 1))
    assert not torch.equal(first, plan(1, 0))


@pytest.mark.parametrize("name", [e.name for e in mechwork.zoo.entries()])
def test_zoo_task_prompts_repeat_for_their_seed_and_change_with_it(name):
    task = mechwork.zoo.get_entry(name).task
    torch.manual_seed(0)
    first = task.data(6, seed=0)
    torch.manual_seed(1)
    again, other = task.data(6, seed=0), task.data(6, seed=1)
    for field in ("clean", "corrupted", "answers", "wrong"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    assert not torch.equal(first.clean, other.clean)
