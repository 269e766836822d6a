"""Blind "recover the program" challenges from tracr-compiled models (kind ``sequence-program``).

The reference is independent of the code under test: a plain-Python program written here for every built-in
(not RASP, not the model) must score 1.0 against the hidden RASP outputs, and the model itself must agree with
them on every input; wrong and plausible-but-wrong programs score clearly lower; a table of the model's
outputs passes the model's own space but not the held-out longer inputs; and the blind export holds nothing
of the program (its name, source, RASP names, residual labels, ground-truth circuit, outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

import mechwork
from mechwork.challenges import (
    ChallengeError,
    SubmissionError,
    blind_name,
    builtin_names,
    export_challenge,
    get_challenge,
    score_submission,
)
from mechwork.challenges import _registry as registry
from mechwork.challenges._sequence import KIND, _checkpoint_outputs, parse_space
from mechwork.cli._main import EXIT_OK, main
from mechwork.models.zoo._tracr import read_record
from mechwork.models.zoo._tracr._space import every_input
from mechwork.models.zoo._tracr._zoo import PREFIX, program_files
from tests.integration.test_challenges import assert_absent, exported_bytes

pytest.importorskip("tracr", reason="tracr is an optional extra: pip install mechwork[tracr]")
# Building a zoo entry imports JAX, whose fork hook warns when the sandbox then starts a process; the child
# only execs bubblewrap (or python -I), so the warning does not apply here.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")

# Each built-in program, written again in plain Python from its description (token texts in, one output per
# position out): the independent reference the hidden RASP outputs must agree with.
RIGHT = {
    "frac_prevs": ("def program(tokens):\n    return [tokens[:i + 1].count('x') / (i + 1) "
                   "for i in range(len(tokens))]\n"),
    "frac_repeats": ("def program(tokens):\n    return [sum(tokens[k] == tokens[k - 1] for k in range(1, p + 1)) / p "
                     "if p else 0.0 for p in range(len(tokens))]\n"),
    "hist": "def program(tokens):\n    return [tokens[:i + 1].count(t) for i, t in enumerate(tokens)]\n",
    "rank": ("def program(tokens):\n    return [sum(int(s) < int(t) for s in tokens[:i]) "
             "for i, t in enumerate(tokens)]\n"),
    "prev_token": "def program(tokens):\n    return [None] + tokens[:-1]\n",
    "two_back": "def program(tokens):\n    return [tokens[i - 2] if i >= 2 else None for i in range(len(tokens))]\n",
    "pointer": ("def program(tokens):\n    first = int(tokens[0])\n"
                "    return [tokens[first] if first <= i else None for i in range(len(tokens))]\n"),
}
# Plausible but wrong: another entry's program, or an off-by-one of the right one.
WRONG = [
    ("hist", "counts earlier equal tokens, not itself",
     "def program(tokens):\n    return [tokens[:i].count(t) for i, t in enumerate(tokens)]\n"),
    ("hist", "rank's program", RIGHT["rank"].replace("int(s) < int(t)", "s < t")),
    ("rank", "counts smaller-or-equal", RIGHT["rank"].replace("<", "<=")),
    ("two_back", "prev_token's program", RIGHT["prev_token"]),
    ("prev_token", "two_back's program", RIGHT["two_back"]),
    ("frac_prevs", "fraction of 'a' instead", RIGHT["frac_prevs"].replace("'x'", "'a'")),
    ("pointer", "follows the last token, not the first",
     RIGHT["pointer"].replace("tokens[0]", "tokens[-1]").replace("first <= i", "first < len(tokens)")),
]


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def test_every_compiled_entry_has_a_blind_challenge_under_a_neutral_name(monkeypatch, capsys):
    stems = [p.stem for p in program_files()]
    names = [blind_name(PREFIX + s) for s in stems]
    assert len(set(names)) == len(stems) and set(names) <= set(builtin_names())
    assert not [(n, s) for n in names for s in stems if s in n or s.replace("_", "") in n]
    assert set(RIGHT) == set(stems)  # a new built-in program needs its reference here
    # listing them builds nothing (no tracr, no model needed to list)
    monkeypatch.setattr(registry.zoo, "ensure_built", lambda *a, **k: pytest.fail("listing built a model"))
    assert main(["challenge", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(f"{n}  [asks for: {KIND}]" in out for n in names)


@pytest.mark.parametrize("stem", sorted(RIGHT))
def test_the_right_program_scores_one_and_the_model_agrees(stem, tmp_path):
    score = score_submission(blind_name(PREFIX + stem), _write(tmp_path, "solution", RIGHT[stem]))
    n = score.numbers
    assert n["accuracy"] == 1.0 and n["held_out_accuracy"] == 1.0 and n["exact"] is True, score.summary
    assert n["model_accuracy"] == 1.0 and n["agreement_with_model"] == 1.0  # the model computes the program
    if n["inputs"] > n["defined_inputs"]:  # where the program has no output, the right answer is None
        assert n["undefined_left_undefined"] == 1.0
    assert n["held_out_longer_inputs"] > 900 and n["isolation"] == "bubblewrap"


@pytest.mark.parametrize("stem, why, source", WRONG, ids=[f"{s}-{w}" for s, w, _ in WRONG])
def test_wrong_programs_score_clearly_lower(stem, why, source, tmp_path):
    n = score_submission(blind_name(PREFIX + stem), _write(tmp_path, "wrong", source)).numbers
    assert n["accuracy"] < 0.8 and n["exact"] is False, (why, n)


def test_a_table_of_the_models_outputs_fails_the_held_out_inputs(tmp_path):
    """The model's own outputs over its whole space, as a lookup table, pass that space (accuracy 1.0) but
    cannot answer inputs longer than the model runs: only the held-out score tells it from the program."""
    name = blind_name(PREFIX + "hist")
    challenge = get_challenge(name)
    space = challenge.space(KIND)
    table = {",".join(space.values[i] for i in x): out for x, out in
             zip(every_input(len(space.values), space.max_length),
                 _checkpoint_outputs(Path(challenge.model_dir()), space, "test"), strict=True)}
    source = (f"TABLE = {json.dumps(table)}\n"
              "def program(tokens):\n"
              "    return [TABLE.get(','.join(tokens[:i + 1]), '1') for i in range(len(tokens))]\n")
    n = score_submission(name, _write(tmp_path, "table", source)).numbers
    assert n["accuracy"] == 1.0 and n["held_out_accuracy"] < 0.5 and n["exact"] is False, n


def _needles(stem: str) -> list[str]:
    """What would give the program away: its names, its source, its RASP values, residual labels, circuit."""
    entry = mechwork.zoo.get_entry(PREFIX + stem)
    record = read_record(mechwork.zoo.ensure_built(entry))
    source = [line.strip() for line in record["source"].splitlines() if len(line.strip()) >= 12]
    computed = {name for c in record["components"] for name in c["computes"].split(", ") if name}
    labels = {d for c in record["components"] for d in [*c["writes"], *sum(c["reads"].values(), [])] if ":" in d}
    truth = entry.ground_truth()
    outputs = record["blind"]["outputs"]
    return [entry.name, stem, record["program"], *source, *computed, *sorted(labels - {"tokens:BOS"}),
            *sorted(truth.edges), *sorted(n for n in truth.nodes if n.startswith("blocks")), "tracr.json",
            "ground_truth", json.dumps(outputs[:40]), json.dumps(outputs[:40], separators=(",", ":"))]


@pytest.mark.parametrize("stem", sorted(RIGHT))
def test_the_blind_export_leaks_nothing_of_the_program(stem, tmp_path):
    export_challenge(blind_name(PREFIX + stem), tmp_path)
    files = exported_bytes(tmp_path)
    assert set(files) == {"README.md", "challenge.json", "starter.ipynb", "model/config.json",
                          "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
                          "model/generation_config.json"}
    assert_absent(files, _needles(stem))
    public = json.loads(files["challenge.json"])
    assert [q["kind"] for q in public["questions"]] == [KIND] and "answer" not in json.dumps(public["questions"])


def test_the_leak_check_catches_a_leaky_export(tmp_path, monkeypatch):
    """The same check, on an export that copies tracr.json beside the weights, finds the program."""
    monkeypatch.setattr(registry, "MODEL_FILES", (*registry.MODEL_FILES, "tracr.json"))
    export_challenge(blind_name(PREFIX + "two_back"), tmp_path)
    with pytest.raises(AssertionError, match="model/tracr.json reveals"):
        assert_absent(exported_bytes(tmp_path), _needles("two_back"))


def test_the_starter_notebook_runs_the_model_in_the_export(tmp_path, monkeypatch, capsys):
    """The notebook's code cells, run in order from the export folder (in this process: a kernel would only
    add its start-up; tests/integration/test_challenges.py runs a starter in a real kernel)."""
    export_challenge(blind_name(PREFIX + "two_back"), tmp_path)
    nb = nbformat.read(tmp_path / "starter.ipynb", as_version=4)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "starter.ipynb", "exec"), namespace)  # noqa: S102 - our own generated code
    assert "['a', 'b', 'c', 'd', 'a', 'b'] -> [None, None, 'a', 'b', 'c', 'd']" in capsys.readouterr().out


# ---- posing one from a program of your own -------------------------------------------------------------
SECRET = '''
from tracr.rasp import rasp

VOCAB = {"p", "q", "r"}
MAX_SEQ_LEN = 5


def program():
    at_start = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0)
    first = rasp.categorical(rasp.Aggregate(at_start, rasp.tokens)).named("opening_token")
    return rasp.categorical(rasp.SequenceMap(lambda t, f: t == f, rasp.tokens, first)).named("secret_echo")
'''
SECRET_RIGHT = "def program(tokens):\n    return [t == tokens[0] for t in tokens]\n"
SECRET_WRONG = "def program(tokens):\n    return [t == tokens[max(i - 1, 0)] for i, t in enumerate(tokens)]\n"


def test_pose_a_blind_challenge_from_a_program_file(tmp_path, capsys):
    source = _write(tmp_path, "mystery_source", SECRET)
    assert main(["challenge", "pose", "mystery", "--tracr", str(source), "--out", str(tmp_path / "pack")]) == EXIT_OK
    assert "posed 'mystery' (sequence-program)" in capsys.readouterr().out
    assert main(["challenge", "export", str(tmp_path / "pack"), str(tmp_path / "blind")]) == EXIT_OK
    assert_absent(exported_bytes(tmp_path / "blind"), ["secret_echo", "opening_token", "mystery_source", "Aggregate",
                                                     "SequenceMap", "lambda t, f", "tracr.json"])
    right = score_submission(tmp_path / "pack", _write(tmp_path, "right", SECRET_RIGHT)).numbers
    assert right["exact"] and right["model_accuracy"] == 1.0 and right["held_out_accuracy"] == 1.0
    wrong = score_submission(tmp_path / "pack", _write(tmp_path, "wrong", SECRET_WRONG)).numbers
    assert wrong["accuracy"] < 0.8 and not wrong["exact"]


# ---- bad submissions and bad packs ---------------------------------------------------------------------
@pytest.mark.parametrize("code, message", [
    ("def solve(tokens):\n    return tokens\n", r"defines no function program\(tokens\)"),
    ("def program(tokens):\n    return tokens[:1]\n", r"program\(\['a', 'a'\]\) returned 1 outputs; it must return "
                                                       r"a list, one output per token"),
    ("def program(tokens):\n    return [1 / 0] * len(tokens)\n", r"program\(\['a'\]\) raised ZeroDivisionError"),
    ("def program(tokens):\n    return [object()] * len(tokens)\n", r"returned a 'object' at the last position"),
    ("def program(tokens):\n    return [float('nan')] * len(tokens)\n", r"returned nan at the last position"),
])
def test_bad_programs_get_clear_messages(code, message, tmp_path):
    with pytest.raises(SubmissionError, match=message):
        score_submission(blind_name(PREFIX + "two_back"), _write(tmp_path, "bad", code))


def test_a_table_is_not_a_program_submission(tmp_path):
    (tmp_path / "outputs.json").write_text('{"labels": [[0]]}')
    with pytest.raises(SubmissionError, match="looks like a program submission, but .* asks for: sequence-program"):
        score_submission(blind_name(PREFIX + "two_back"), tmp_path / "outputs.json")


@pytest.mark.parametrize("change, message", [
    ({"output": {"type": "ordinal", "tokens": ["0"]}}, r"space.output.type: 'categorical' or 'numerical'"),
    ({"values": ["a", "a"]}, r"space.values: must be distinct"),
    ({"max_length": 40}, r"inputs is more than a submission is run on"),
    ({"secret": 1}, r"unknown key\(s\) \['secret'\]"),
])
def test_bad_spaces_are_refused_saying_where(change, message):
    space = {"bos": "BOS", "values": ["a", "b"], "max_length": 3, "output": {"type": "numerical", "token": "<v>"},
             "held_out_longer": 10}
    with pytest.raises(ChallengeError, match=message):
        parse_space({**space, **change}, "pack/challenge.json: questions[0].space")
