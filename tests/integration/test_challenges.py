"""Challenges: blind export leaks nothing, submissions are scored against the hidden answer (and
malformed or hostile ones get clear messages), hypothesis tests, posing new challenges, the CLI."""

import json
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import mechwork
from mechwork.bench import BenchSettings, run_leaderboard
from mechwork.challenges import (
    SubmissionError,
    create_circuit_challenge,
    create_program_challenge,
    export_challenge,
    get_challenge,
    predict_labels,
    resample_circuit,
    resample_variable,
    score_submission,
)
from mechwork.cli._main import EXIT_OK, EXIT_USAGE, main
from mechwork.models.zoo import pairs, trojan
from mechwork.models.zoo._training import Architecture, TrainingRecipe

ROOT = Path(__file__).resolve().parents[2]


def exported_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_absent(files: dict[str, bytes], needles: list[str]) -> None:
    for name, content in files.items():
        for needle in needles:
            assert needle.encode() not in content, f"{name} reveals {needle!r}"


@pytest.fixture(scope="module")
def pairs_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs_export")
    export_challenge("pairs", out)
    return out


def test_pairs_export_reveals_no_labels(pairs_export):
    files = exported_bytes(pairs_export)
    assert set(files) >= {"model/model.safetensors", "model/config.json", "README.md", "starter.ipynb",
                          "challenge.json"}
    assert not any(n.endswith(("answer.json", "mechwork.json", "task.json")) for n in files)
    table = pairs.label_table(pairs.hidden_label)
    rows = [json.dumps(table[a].tolist()) for a in range(0, 113, 7)]
    assert_absent(files, [pairs.HIDDEN_DESCRIPTION, "hidden_label", "XOR", "".join(map(str, table[0].tolist())),
                          *rows, *(r.replace(" ", "") for r in rows)])


def test_trojan_and_circuit_exports_reveal_no_answer(tmp_path):
    export_challenge("trojan", tmp_path / "trojan")
    token_ids = [v + trojan.VALUE_OFFSET for v in trojan.TRIGGER_VALUES]
    assert_absent(exported_bytes(tmp_path / "trojan"), [
        " ".join(trojan.TRIGGER), json.dumps(list(trojan.TRIGGER)), ",".join(trojan.TRIGGER),
        json.dumps(token_ids), ",".join(map(str, token_ids)), trojan.BEHAVIOUR])
    for name in ("induction", "lookup"):
        export_challenge(name, tmp_path / name)
        files = exported_bytes(tmp_path / name)
        assert "task.json" in files  # the prompts are public for circuit challenges
        truth = mechwork.zoo.get_entry(name).ground_truth()
        assert_absent(files, sorted(truth.edges) + sorted(n for n in truth.nodes if n.startswith("blocks")))


def test_blind_round_trip_from_the_participants_side(pairs_export, tmp_path):
    # The participant sees only the export: boot the model from it, read its labels, submit them.
    model = mechwork.load(pairs_export / "model")
    model_table = predict_labels(model, pairs.all_pairs(), pairs.LABEL_TOKENS).reshape(113, 113)
    (tmp_path / "model_labels.json").write_text(json.dumps({"labels": model_table.tolist()}))
    score = score_submission("pairs", tmp_path / "model_labels.json")
    hidden = pairs.label_table(pairs.hidden_label)
    assert score.numbers["agreement_with_model"] == 1.0
    assert score.numbers["agreement_with_hidden"] == pytest.approx(float((model_table == hidden).float().mean()))
    assert score.numbers["agreement_with_hidden_where_model_differs"] == 0.0
    # ... and the right program, as a Python file run in a separate process
    (tmp_path / "label.py").write_text("def label(a, b):\n    return int((a + b >= 113) != (a % 2 == 1))\n")
    right = score_submission("pairs", tmp_path / "label.py")
    assert right.numbers["exact"] and right.numbers["agreement_with_hidden_where_model_differs"] == 1.0
    # the long CSV form scores the same as the grid
    rows = "a,b,label\n" + "".join(f"{a},{b},{int(hidden[a, b])}\n" for a in range(113) for b in range(113))
    (tmp_path / "labels.csv").write_text(rows)
    assert score_submission("pairs", tmp_path / "labels.csv").numbers["exact"]


def test_starter_notebook_runs_in_the_export(tmp_path):
    export_challenge("induction", tmp_path)
    nb = nbformat.read(tmp_path / "starter.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("code, message", [
    ("def label(a, b):\n    return 1 // (a - 5) + 1\n", r"label\(5, 0\) raised ZeroDivisionError"),
    ("def label(a, b)\n    return 0\n", r"importing the file raised SyntaxError"),
    ("def labels(a, b):\n    return 0\n", r"defines no function label\(a, b\)"),
    ("def label(a, b):\n    return 2\n", r"label\(0, 0\) returned 2; labels must be 0 or 1"),
    ("def label(a, b):\n    while True:\n        pass\n", r"did not finish all 12769 inputs within 2 s"),
    ("import os\nos._exit(3)\n", r"produced no answer \(exit status 3\)"),
])
def test_bad_programs_get_clear_messages(tmp_path, code, message):
    path = tmp_path / "label.py"
    path.write_text(code)
    with pytest.raises(SubmissionError, match=message):
        score_submission("pairs", path, timeout=2)


def test_submitted_code_runs_isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHWORK_SECRET", "do-not-leak")
    code = ("import os\nopen('written-here', 'w').write('x')\n"
            "assert 'MECHWORK_SECRET' not in os.environ, 'environment leaked'\n"
            "def label(a, b):\n    return 0\n")
    (tmp_path / "label.py").write_text(code)
    score_submission("pairs", tmp_path / "label.py")
    assert not (tmp_path / "written-here").exists() and not (Path.cwd() / "written-here").exists()


@pytest.mark.parametrize("content, message", [
    ('{"labels": [[0, 1], [1, 0]]}', r"must be 113 x 113"),
    ('{"labels": ' + json.dumps([[0] * 112 + [3]] * 113) + "}", r"row 0, column 112 is 3"),
    ('{"edges": ["input->blocks.9.mlp"]}', r"asks for: program"),
    ("{not json", r"not valid JSON \(line 1"),
    ('{"something": 1}', r"cannot tell what this answers"),
])
def test_malformed_submission_files(tmp_path, content, message):
    path = tmp_path / "sub.json"
    path.write_text(content)
    with pytest.raises(SubmissionError, match=message):
        score_submission("pairs", path)


def test_circuit_scores_against_the_planted_circuit(tmp_path):
    truth = mechwork.zoo.get_entry("induction").ground_truth()
    (tmp_path / "planted.json").write_text(json.dumps({"edges": sorted(truth.edges)}))
    full = score_submission("induction", tmp_path / "planted.json").numbers
    assert full["edge_precision"] == full["edge_recall"] == full["node_recall"] == 1.0
    assert full["edge_roc_auc"] == 1.0 and full["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    some = sorted(truth.edges)[:2] + ["input->blocks.1.attn.head.3.q"]
    (tmp_path / "partial.json").write_text(json.dumps({"edges": some}))
    partial = score_submission("induction", tmp_path / "partial.json").numbers
    assert partial["edge_precision"] == pytest.approx(2 / 3) and partial["edge_recall"] == pytest.approx(2 / 5)
    (tmp_path / "typo.json").write_text(json.dumps({"edges": ["blocks.1.attn.head.0->logit"]}))
    with pytest.raises(SubmissionError, match="Did you mean: blocks.1.attn.head.0->logits"):
        score_submission("induction", tmp_path / "typo.json")
    # a mechwork circuit file is a valid submission too; ACDC's ranks by its signed scores
    acdc = score_submission("induction", ROOT / "circuits" / "induction-acdc.json").numbers
    assert acdc["edge_roc_auc"] == 1.0 and acdc["ranked_by"] == "score"


def test_trigger_scores_reproduction_and_overlap(tmp_path):
    (tmp_path / "planted.json").write_text(json.dumps({"trigger": list(trojan.TRIGGER)}))
    planted = score_submission("trojan", tmp_path / "planted.json").numbers
    assert planted["reproduces"] and planted["exact"] and planted["flip_rate"] > 0.9
    assert planted["random_flip_rate"] < 0.1
    (tmp_path / "part.txt").write_text(" ".join(trojan.TRIGGER[1:]))
    part = score_submission("trojan", tmp_path / "part.txt").numbers
    assert not part["exact"] and part["token_overlap"] == pytest.approx(2 / 3)
    assert part["longest_common_run"] == pytest.approx(2 / 3) and part["flip_rate"] < planted["flip_rate"]
    (tmp_path / "bad.json").write_text(json.dumps({"trigger": ["n7", "n99"]}))
    with pytest.raises(SubmissionError, match=r"\['n99'\] are not input tokens"):
        score_submission("trojan", tmp_path / "bad.json")


def test_resample_circuit_keeps_the_planted_behaviour(induction):
    data = mechwork.zoo.get_entry("induction").task.data(48, seed=4)
    truth = mechwork.zoo.get_entry("induction").ground_truth()
    planted = resample_circuit(induction, data, sorted(truth.edges | truth.structural_edges), n_resamples=3)
    assert planted.surviving > 0.95 and planted.accuracy_claimed > 0.95 and planted.accuracy_control < 0.7
    everything = resample_circuit(induction, data, mechwork.graph.Graph.from_model(induction).edges, n_resamples=2)
    assert everything.claimed == pytest.approx(everything.full, abs=1e-4)  # nothing resampled: the clean run
    wrong = resample_circuit(induction, data, ["input->blocks.1.attn.head.0.v"], n_resamples=3)
    assert wrong.surviving < 0.2


def test_resample_variable_separates_true_and_false_claims(induction):
    data = mechwork.zoo.get_entry("induction").task.data(64, seed=5)
    true_claim = resample_variable(induction, data, "blocks.1.hook_resid_post", data.answers, position=-1)
    assert true_claim.surviving > 0.95 and true_claim.accuracy_claimed == 1.0
    g = torch.Generator().manual_seed(0)
    false_claim = resample_variable(induction, data, "blocks.1.hook_resid_post",
                                    torch.randint(0, 2, (64,), generator=g), position=-1)
    assert false_claim.surviving < 0.5
    with pytest.raises(mechwork.hooks.UnknownHookError, match="resid_post"):
        resample_variable(induction, data, "blocks.1.hook_resid_pots", data.answers)


def test_posing_new_challenges_round_trip(tmp_path):
    table = pairs.label_table(lambda a, b: int(a < b))
    tiny = Architecture(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=3, activation="relu")
    create_program_challenge("less-than", table, tmp_path / "pack", arch=tiny,
                             recipe=TrainingRecipe(epochs=2, lr=1e-3), answer_text="a < b")
    export_challenge(tmp_path / "pack", tmp_path / "blind")
    files = exported_bytes(tmp_path / "blind")
    assert_absent(files, ["a < b", json.dumps(table[10].tolist())])
    (tmp_path / "sub.json").write_text(json.dumps({"labels": table.tolist()}))
    assert score_submission(tmp_path / "pack", tmp_path / "sub.json").numbers["exact"]
    with pytest.raises(mechwork.challenges.ChallengeError, match="is a blind export"):
        get_challenge(tmp_path / "blind")  # the export is not a pack: it has no answer to score against
    create_circuit_challenge("ind", "zoo:induction", ROOT / "circuits" / "induction-acdc.json", tmp_path / "cpack",
                             task_text="repeat the letter after the earlier copy.")
    (tmp_path / "c.json").write_text(json.dumps({"edges": sorted(mechwork.zoo.get_entry("induction")
                                                                 .ground_truth().edges)}))
    assert score_submission(tmp_path / "cpack", tmp_path / "c.json").numbers["edge_recall"] == 1.0


def test_challenge_cli(tmp_path, capsys):
    assert main(["challenge", "list"]) == EXIT_OK
    assert "trojan" in capsys.readouterr().out
    assert main(["challenge", "export", "lookup", str(tmp_path / "blind")]) == EXIT_OK
    (tmp_path / "t.json").write_text(json.dumps({"trigger": list(trojan.TRIGGER)}))
    assert main(["challenge", "score", "trojan", str(tmp_path / "t.json"), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["numbers"]["exact"] is True
    assert main(["challenge", "score", "trojn", str(tmp_path / "t.json")]) == EXIT_USAGE
    assert "Did you mean 'trojan'" in capsys.readouterr().err


def test_bench_page_and_determinism(tmp_path):
    settings = BenchSettings(n_prompts=8, seed=2)
    first = run_leaderboard(tmp_path / "a", models=["induction"], methods=["eap", "eap-ig"], settings=settings,
                            progress=None)
    second = run_leaderboard(tmp_path / "b", models=["induction"], methods=["eap", "eap-ig"], settings=settings,
                             progress=None)
    drop = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert drop == [{k: v for k, v in r.items() if k != "seconds"} for r in second]
    page = (tmp_path / "a" / "leaderboard.html").read_text()
    assert page.count("Plotly.newPlot") == 3 and "<script src" not in page and "eap-ig" in page


def test_pose_from_the_cli(tmp_path, capsys):
    (tmp_path / "label.py").write_text("def label(a, b):\n    return int(a > b)\n")
    assert main(["challenge", "pose", "greater", "--labels", str(tmp_path / "label.py"), "--epochs", "1",
                 "--answer-text", "a > b", "--out", str(tmp_path / "pack")]) == EXIT_OK
    (tmp_path / "sub.py").write_text("def label(a, b):\n    return int(a > b)\n")
    assert score_submission(tmp_path / "pack", tmp_path / "sub.py").numbers["exact"]
    assert main(["challenge", "pose", "ind", "--circuit", str(ROOT / "circuits" / "induction-acdc.json"),
                 "--model", "zoo:induction", "--task-text", "repeat after the copy.",
                 "--out", str(tmp_path / "cpack")]) == EXIT_OK
    assert get_challenge(tmp_path / "cpack").asks == ("circuit",)
    assert main(["challenge", "pose", "x", "--out", str(tmp_path / "none")]) == EXIT_USAGE
    assert "give either --labels" in capsys.readouterr().err
