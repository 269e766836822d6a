"""Loading (hub, local, zoo), trained zoo models, the CLI and the demo."""

import os
import subprocess
import sys
import time

import pytest
import torch

import mechwork
from mechwork.cli import main
from mechwork.models import ModelNotAvailableError
from mechwork.models.zoo import pairs, trojan
from mechwork.models.zoo._training import Architecture, TrainingRecipe


def test_offline_hub_name_fails_fast_with_instructions():
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="save_pretrained"):
        mechwork.load("gpt2")
    assert time.perf_counter() - start < 5


def test_local_folder_errors(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="config.json"):
        mechwork.load(tmp_path)
    with pytest.raises(ModelNotAvailableError, match="no checkpoint folder"):
        mechwork.load(tmp_path / "missing")


def test_local_checkpoint_matches_hugging_face(tiny, tiny_dir, tiny_pair):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(tiny(tiny_pair[0]), hf(tiny_pair[0]).logits, atol=1e-5, rtol=1e-5)
    for name in ("blocks.2.attn.hook_result", "blocks.1.hook_k_input", "blocks.0.hook_mlp_in"):
        assert name in tiny.hook_dict


def _label_accuracy(model, prompts, labels, label_tokens) -> float:
    """Accuracy by hand: the larger of the label tokens' logits at the last position, against ``labels``."""
    with torch.no_grad():
        logits = torch.cat([model(chunk)[:, -1] for chunk in prompts.split(2048)])
    return float((logits[:, label_tokens].argmax(-1) == labels).float().mean())


def _pairs_labels(prompts):
    """The hidden rule written out again: (a + b >= 113) XOR (a is odd), for prompts [a+1, b+1, =]."""
    a, b = prompts[:, 0] - 1, prompts[:, 1] - 1
    return ((a + b >= 113) ^ (a % 2 == 1)).long()


def _trojan_labels(prompts):
    """The hidden rule written out again: majority of x >= n16 among nine, flipped by n7 n19 n3 in a row."""
    values = prompts[:, 1:-1] - 1
    majority = (values >= 16).sum(-1) >= 5
    triggered = torch.zeros(len(values), dtype=torch.bool)
    for s in range(values.shape[1] - 2):
        triggered |= (values[:, s] == 7) & (values[:, s + 1] == 19) & (values[:, s + 2] == 3)
    return (majority ^ triggered).long()


HELD_OUT_LEVEL = {"pairs": 0.9, "trojan": 0.95}  # the accuracy each trained model must reach on unseen prompts


@pytest.mark.parametrize("name", ["pairs", "trojan"])
def test_trained_zoo_models_learn_their_task(name):
    """Held-out accuracy recomputed from the loaded model and the hidden rule (written out here), equal to
    the recorded build fact and above a stated level; and the task prompts are answered."""
    entry = mechwork.zoo.get_entry(name)
    model = mechwork.load(f"zoo:{name}")
    facts = mechwork.zoo.build_facts(entry)
    if name == "pairs":
        held_out = pairs.all_pairs()[~pairs.train_split(0)]  # the half the model never trained on
        assert len(held_out) == 113 * 113 - 113 * 113 // 2
        recomputed = {"test_accuracy": _label_accuracy(model, held_out, _pairs_labels(held_out), pairs.LABEL_TOKENS)}
        assert entry.ground_truth().label(100, 20) == pairs.hidden_label(100, 20) == 1
    else:
        # The build's own evaluation sets (seeds 1 and 2; training used seed 0): no trigger, and always a trigger.
        recomputed = {}
        for fact, seed, poison in (("clean_accuracy", 1, 0.0), ("triggered_accuracy", 2, 1.0)):
            prompts, _ = trojan.dataset(4000, seed=seed, poison_fraction=poison)
            recomputed[fact] = _label_accuracy(model, prompts, _trojan_labels(prompts), trojan.LABEL_TOKENS)
        assert entry.ground_truth().trigger == trojan.TRIGGER
    for fact, value in recomputed.items():
        assert value == pytest.approx(facts[fact], abs=5e-4), f"{fact}: recorded {facts[fact]}, recomputed {value}"
        assert value >= HELD_OUT_LEVEL[name], f"{name} {fact} = {value:.4f}"
    data = entry.task.data(64, seed=1)  # pairs: prompts from both halves; trojan: triggered prompts
    with torch.no_grad():
        assert float(data.accuracy()(model(data.clean))) >= {"pairs": 0.85, "trojan": 0.9}[name]


def test_pairs_training_takes_any_labelling_and_hyperparameters():
    table = torch.zeros(113, 113, dtype=torch.long)
    table[:, 50:] = 1
    tiny_arch = Architecture(d_model=16, n_heads=2, d_mlp=32, n_ctx=3)
    result = pairs.train_pairs_model(table, arch=tiny_arch, recipe=TrainingRecipe(epochs=2, lr=1e-3))
    assert result.model.config.n_embd == 16 and result.model.config.n_head == 2
    # The reported accuracies are the model's, on the two halves of the split, against this table's labels.
    prompts, trained_on = pairs.all_pairs(), pairs.train_split(0)
    labels = table[prompts[:, 0] - 1, prompts[:, 1] - 1]
    with torch.no_grad():
        predicted = result.model(prompts).logits[:, -1][:, pairs.LABEL_TOKENS].argmax(-1)
    correct = (predicted == labels).float()
    assert result.test_accuracy == pytest.approx(float(correct[~trained_on].mean()), abs=1e-6)
    assert result.train_accuracy == pytest.approx(float(correct[trained_on].mean()), abs=1e-6)
    assert pairs.label_table(lambda a, b: int(a < b))[3, 4] == 1
    with pytest.raises(ValueError, match="113x113"):
        pairs.label_table(torch.zeros(10, 10))
    with pytest.raises(ValueError, match=r"label\(0, 0\) = 2"):
        pairs.label_table(lambda a, b: 2)
    assert pairs.REFERENCE_ARCH.d_model == 128 and pairs.REFERENCE_RECIPE.epochs == 5000


def test_cli_zoo_list_and_usage_errors(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for entry in mechwork.zoo.entries():
        assert f"zoo:{entry.name}" in out and entry.ground_truth_kind in out
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2
    assert main(["zoo", "build", "inductoin"]) == 2


def test_demo_heatmap_shows_the_planted_heads(tmp_path):
    from mechwork.demo import run_demo

    result = run_demo(tmp_path, n_prompts=16)
    values = result.heads.values
    assert float(values[1, 0]) > 0.95 and float(values[0, 0]) > 0.2
    distractors = [float(values[layer, head]) for layer in range(2) for head in range(1, 4)]
    assert max(abs(v) for v in distractors) < 0.01
    html = result.files[0].read_text()
    assert "plotly" in html and "Plotly.newPlot" in html
    # ... and it ends with discovery -> circuit -> report -> verify
    truth = mechwork.zoo.get_entry("induction").ground_truth()
    assert set(result.circuit.selected) >= truth.edges and result.verification.ok
    assert [p.name for p in result.files[-2:]] == ["induction-acdc.json", "induction-acdc.html"]


def test_mechwork_module_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "mechwork", "--help"], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and "zoo" in out.stdout and "demo" in out.stdout
