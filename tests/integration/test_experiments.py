"""`mechwork run EXPERIMENT.toml`: the examples run, results are recorded and resumed, bad files say where."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechwork.cli._main import EXIT_OK, EXIT_USAGE, main
from mechwork.discovery import Circuit
from mechwork.experiments import ExperimentError, parse_experiment, run_experiment
from mechwork.experiments import _steps as steps_module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

MINIMAL = """
name = "mini"
[model]
spec = "zoo:induction"
[task]
zoo = "induction"
n_prompts = 8
{steps}
"""
TWO_STEPS = """
[[step]]
kind = "patch"
name = "heads"
[[step]]
kind = "discover"
name = "eap"
method = "eap"
select = "top-n"
value = 5
"""


def write(tmp_path, text, name="exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_runs_and_records_how(example, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(example), "--out", str(out), "--quiet"]) == EXIT_OK
    run = json.loads((out / "run.json").read_text())
    assert run["versions"]["mechwork"] and run["versions"]["torch"] == torch.__version__
    assert (out / "experiment.toml").read_text() == example.read_text()
    experiment = parse_experiment(example)
    for step in experiment.steps:
        record = run["steps"][step.name]
        assert record["status"] == "done" and record["files"]
        assert all((out / f).stat().st_size > 0 for f in record["files"])
    assert not list(out.rglob("*.tmp*")), "a temporary file was left behind"


def test_patch_step_results_match_the_hooks_layer(tmp_path, induction):
    from mechwork import zoo
    from mechwork.hooks import activation_patching

    run_experiment(write(tmp_path, MINIMAL.format(steps=TWO_STEPS)), tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "heads" / "result.json").read_text())
    data = zoo.get_entry("induction").task.data(8, seed=0)
    direct = activation_patching(induction, data.clean, data.corrupted, data.logit_diff(), "z").normalized()
    assert torch.allclose(torch.tensor(saved["values"]), direct.values, atol=1e-5)
    rows = (tmp_path / "out" / "heads" / "result.csv").read_text().splitlines()
    assert rows[0] == "layer,head,value" and len(rows) == 1 + direct.values.numel()
    layer, head, value = rows[1 + 5].split(",")  # row-major: layer 1, head 1 with 4 heads
    assert (int(layer), int(head)) == (1, 1) and float(value) == pytest.approx(float(direct.values[1, 1]))
    circuit = Circuit.load(tmp_path / "out" / "eap" / "circuit.json")
    assert circuit.n_edges == 5 and circuit.provenance["seed"] == 0 and circuit.ground_truth


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    path, out = write(tmp_path, MINIMAL.format(steps=TWO_STEPS)), tmp_path / "out"
    real = steps_module.RUNNERS["discover"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(steps_module.RUNNERS, "discover", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(path, out, progress=False)
    record = json.loads((out / "run.json").read_text())["steps"]
    assert record["heads"]["status"] == "done" and record["eap"]["status"] == "running"
    heads_json = (out / "heads" / "result.json").stat().st_mtime_ns
    monkeypatch.setitem(steps_module.RUNNERS, "discover", real)
    result = run_experiment(path, out, progress=False)
    assert result.skipped == ("heads",) and result.ran == ("eap",)
    assert (out / "heads" / "result.json").stat().st_mtime_ns == heads_json  # not recomputed
    # A changed step reruns; the unchanged one does not.
    write(tmp_path, MINIMAL.format(steps=TWO_STEPS.replace("value = 5", "value = 7")))
    result = run_experiment(path, out, progress=False)
    assert result.ran == ("eap",) and Circuit.load(out / "eap" / "circuit.json").n_edges == 7
    assert run_experiment(path, out, progress=False, force=True).ran == ("heads", "eap")


def test_how_a_step_runs_is_not_part_of_its_resume_key():
    """Spreading a finished step over workers (or hiding its progress bar) computes the same result: the
    resume key stays; a setting that changes the result changes it."""
    from mechwork.experiments._config import Step

    def key(options: dict) -> str:
        return Step("discover", "d", {"method": "acdc", "options": options}, 0).fingerprint({"model": "m"})

    base = key({"threshold": 0.01})
    assert key({"threshold": 0.01, "executor": "ray", "progress": False}) == base
    assert key({"threshold": 0.02}) != base


@pytest.mark.parametrize("text, message", [
    ('name = "x"\n[model]\nspec = "zoo:induction"\n[task]\nzoo = "induction"\n[[step]]\nkind = "patch"\nsiet = "z"\n',
     r"\[\[step\]\] #1 \('01-patch'\): unknown key 'siet' \(did you mean 'site'\?\)"),
    (MINIMAL.format(steps='[[step]]\nkind = "patsh"\n'), r"key 'kind' is 'patsh'.*did you mean 'patch'"),
    (MINIMAL.format(steps='[[step]]\nkind = "patch"\nper_position = "yes"\n'),
     r"key 'per_position' must be bool, got str 'yes'"),
    (MINIMAL.format(steps='[[step]]\nkind = "discover"\n'), r"\[\[step\]\] #1 \('01-discover'\): missing key 'method'"),
    (MINIMAL.format(steps='[[step]]\nkind = "verify"\ncircuit = "nope"\n'), r"must name an earlier 'discover' step"),
    (MINIMAL.format(steps='[[step]]\nkind = "patch"\nname = "a"\n[[step]]\nkind = "patch"\nname = "a"\n'),
     r"repeated: a"),
    ('[model]\nspec = "zoo:induction"\n[task]\nclean = ["a"]\n[[step]]\nkind = "patch"\n',
     r"\[task\] needs 'zoo = NAME', 'prompts = FILE' or all of .* \(missing: corrupted, answers, wrong\)"),
    ('[model\nspec = 1\n', r"not valid TOML: .*line 1"),
    (MINIMAL.format(steps=""), r"missing key 'step'"),
])
def test_bad_experiment_files_say_which_key_and_why(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ExperimentError, match=message) as info:
        parse_experiment(path)
    assert str(path) in str(info.value)


def test_bad_file_from_the_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, MINIMAL.format(steps='[[step]]\nkind = "patch"\nsiet = "z"\n'))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    assert "did you mean 'site'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prompt_string_tasks_tokenise_and_check_answers(tmp_path):
    steps = '[[step]]\nkind = "patch"\nname = "heads"\n'
    task = ('[task]\nclean = ["a b c d a", "e f g h e"]\ncorrupted = ["a b c d e", "e f g h a"]\n'
            'answers = ["b", "f"]\nwrong = ["f", "b"]\n')
    text = f'[model]\nspec = "zoo:induction"\n{task}{steps}'
    run_experiment(write(tmp_path, text), tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "heads" / "result.json").read_text())
    assert saved["clean_value"] > saved["corrupted_value"]  # induction: the repeated token predicts its successor
    bad = text.replace('answers = ["b", "f"]', 'answers = ["b b", "f"]')
    with pytest.raises(ExperimentError, match="answer 'b b' is 2 tokens"):
        run_experiment(write(tmp_path, bad, "bad.toml"), tmp_path / "out2", progress=False)
    # a shorter pair would be padded and scored at a padding position: refused, naming the prompts
    ragged = text.replace('"e f g h e"]', '"e f g e"]').replace('"e f g h a"]', '"e f g a"]')
    with pytest.raises(ExperimentError, match=r"clean prompts tokenise to different lengths \(clean #1: 5 tokens"):
        run_experiment(write(tmp_path, ragged, "ragged.toml"), tmp_path / "out3", progress=False)


def test_cli_lists_every_command_and_each_has_an_example(capsys):
    out = subprocess.run([sys.executable, "-m", "mechwork", "--help"], capture_output=True, text=True, check=True)
    commands = ("demo", "zoo", "cache", "patch", "discover", "report", "verify", "run")
    assert all(c in out.stdout for c in commands)
    for command in (*commands, "bench", "circuits"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and "example: mechwork" in capsys.readouterr().out, command


def test_patch_and_cache_commands(tmp_path, capsys):
    from mechwork.hooks import load_activations

    assert main(["patch", "--model", "zoo:induction", "--n-prompts", "8", "--out", str(tmp_path / "p")]) == EXIT_OK
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert result["dims"] == ["layer", "head"] and (tmp_path / "p" / "heatmap.html").exists()
    assert main(["cache", "--model", "zoo:induction", "--hooks", "blocks.*.attn.hook_z", "--n-prompts", "8",
                 "--out", str(tmp_path / "acts")]) == EXIT_OK
    acts = load_activations(tmp_path / "acts")
    assert set(acts) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"} and acts["blocks.0.attn.hook_z"].shape[0] == 8
    assert main(["patch", "--model", "gpt2", "--out", str(tmp_path / "q")]) == EXIT_USAGE
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "r.html")]) == EXIT_USAGE
    assert "no such circuit file" in capsys.readouterr().err


def test_resample_step_checks_a_discovered_circuit(tmp_path):
    steps = ('[[step]]\nkind = "discover"\nname = "acdc"\nmethod = "acdc"\n'
             '[[step]]\nkind = "resample"\nname = "check"\ncircuit = "acdc"\nn_resamples = 2\n'
             '[[step]]\nkind = "discover"\nname = "tiny"\nmethod = "eap"\nselect = "top-n"\nvalue = 1\n'
             '[[step]]\nkind = "resample"\nname = "check-tiny"\ncircuit = "tiny"\nn_resamples = 2\n')
    run_experiment(write(tmp_path, MINIMAL.format(steps=steps)), tmp_path / "out", progress=False)
    full = json.loads((tmp_path / "out" / "check" / "resample.json").read_text())
    one_edge = json.loads((tmp_path / "out" / "check-tiny" / "resample.json").read_text())
    assert full["surviving"] > 0.95 and one_edge["surviving"] < 0.5
    bad = MINIMAL.format(steps='[[step]]\nkind = "resample"\ncircuit = "nothing"\n')
    with pytest.raises(ExperimentError, match="must name an earlier 'discover' step"):
        parse_experiment(write(tmp_path, bad, "bad.toml"))
