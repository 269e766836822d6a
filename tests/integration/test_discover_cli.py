"""`mechwork discover`, `verify` and `bench` from the command line."""

import csv
import json

import pytest

import mechwork
from mechwork.bench import BenchSettings, run_leaderboard
from mechwork.cli._main import main
from mechwork.discovery import Circuit


@pytest.mark.parametrize("method", [m.name for m in mechwork.discovery.methods()])
def test_discover_every_method_then_verify(method, tmp_path, capsys):
    out = tmp_path / f"{method}.json"
    assert main(["discover", "--model", "zoo:induction", "--method", method, "--out", str(out),
                 "--n-prompts", "8"]) == 0
    circuit = Circuit.load(out)
    assert circuit.method == method and circuit.model["spec"] == "zoo:induction" and circuit.n_edges > 0
    assert "edge ROC AUC" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    data = json.loads(out.read_text())
    data["faithfulness"]["value"] += 0.5
    out.write_text(json.dumps(data))
    assert main(["verify", str(out)]) == 1
    assert "does NOT reproduce" in capsys.readouterr().out


def test_discover_usage_errors(tmp_path, capsys):
    out = str(tmp_path / "c.json")
    assert main(["discover", "--model", "zoo:induction", "--method", "acdc", "--out", out, "--option", "foo=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(["discover", "--model", "gpt2", "--method", "acdc", "--out", out]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--model", "zoo:induction", "--method", "acdcc", "--out", out])
    assert exc.value.code == 2
    (tmp_path / "bad.json").write_text("{}")
    assert main(["verify", str(tmp_path / "bad.json")]) == 2
    assert "schema" in capsys.readouterr().err


def test_bench_writes_the_leaderboard_and_resumes(tmp_path, monkeypatch):
    settings = BenchSettings(n_prompts=8, seed=3)
    rows = run_leaderboard(tmp_path, models=["lookup"], methods=["exact", "acdc"], settings=settings, progress=None)
    assert [r["method"] for r in rows] == ["exact", "acdc"]
    assert all(r["edge_roc_auc"] >= 0.95 for r in rows)
    with open(tmp_path / "leaderboard.csv") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[1]["edge_roc_auc"]) == rows[1]["edge_roc_auc"]
    assert "| lookup | acdc |" in (tmp_path / "leaderboard.md").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr("mechwork.discovery.find_circuit", refuse)
    again = run_leaderboard(tmp_path, models=["lookup"], methods=["exact", "acdc"], settings=settings, progress=None)
    assert again == rows


def _prompt_rows(n: int = 4) -> list[dict]:
    """Pairs for the tiny family checkpoints (word-level vocabulary w0 .. w39), equal token lengths."""
    rows = []
    for i in range(n):
        words = [f"w{(7 * i + j) % 39 + 1}" for j in range(5)]
        rows.append({"clean": " ".join(words), "corrupted": " ".join(words[:-1] + [f"w{(i + 20) % 39 + 1}"]),
                     "answer": words[1], "wrong": words[2]})
    return rows


@pytest.mark.filterwarnings("ignore::mechwork.models.SlowPathWarning")
@pytest.mark.parametrize("form", ["csv", "json-rows", "json-lists"])
def test_discover_on_a_local_checkpoint_with_a_prompts_file(form, tmp_path, capsys):
    """A Llama checkpoint with grouped-query attention, prompts from a file: circuit written, verify passes."""
    from mechwork.models._families import build_checkpoint

    folder = build_checkpoint("llama", tmp_path / "llama")
    rows = _prompt_rows()
    prompts = tmp_path / ("pairs.csv" if form == "csv" else "pairs.json")
    if form == "csv":
        with open(prompts, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["clean", "corrupted", "answer", "wrong"])
            writer.writeheader()
            writer.writerows(rows)
    elif form == "json-rows":
        prompts.write_text(json.dumps(rows))
    else:
        prompts.write_text(json.dumps({"clean": [r["clean"] for r in rows], "corrupted": [r["corrupted"] for r in rows],
                                       "answers": [r["answer"] for r in rows], "wrong": [r["wrong"] for r in rows]}))
    out = tmp_path / "c.json"
    assert main(["discover", "--model", str(folder), "--prompts", str(prompts), "--method", "eap",
                 "--select", "top-n", "--value", "10", "--out", str(out)]) == 0
    circuit = Circuit.load(out)
    assert circuit.model["spec"] == str(folder) and circuit.model["n_kv_heads"] == 2 and circuit.n_edges == 10
    assert circuit.task["name"] == "pairs" and len(circuit.task["prompts"]["clean"]) == 4
    assert any(".kv_head." in e for e in circuit.edges)
    assert main(["verify", str(out)]) == 0


def test_prompts_file_errors_name_the_file_and_the_row(tmp_path, capsys):
    from mechwork.models._families import build_checkpoint

    folder = str(build_checkpoint("gpt2", tmp_path / "gpt2"))
    out = str(tmp_path / "c.json")

    def fails(content: str, suffix: str, *expected: str) -> None:
        path = tmp_path / f"p{suffix}"
        path.write_text(content)
        assert main(["discover", "--model", folder, "--prompts", str(path), "--method", "eap", "--out", out]) == 2
        err = capsys.readouterr().err
        assert str(path) in err, err
        for text in expected:
            assert text in err, err

    rows = _prompt_rows(2)
    fails("clean,corrupted,answer\nw1 w2,w1 w3,w2\n", ".csv", "header clean,corrupted,answer,wrong")
    fails(json.dumps([rows[0], {**rows[1], "wrong": ""}]), ".json", "prompt 2", "wrong")
    fails('[{"clean": "w1",\n  "corrupted" "w2"}]', ".json", "line 2", "not valid JSON")
    fails(json.dumps([{**rows[0], "corrupted": rows[0]["corrupted"] + " w5"}]), ".json", "same number of tokens")
    fails(json.dumps([{**rows[0], "answer": "w1 w2"}]), ".json", "'w1 w2' is 2 tokens")
    fails(json.dumps({"clean": ["w1"], "corrupted": ["w2"], "answers": ["w3"], "wrong": []}), ".json", "'wrong'")
    assert main(["discover", "--model", folder, "--method", "eap", "--out", out]) == 2
    assert "--prompts FILE" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
