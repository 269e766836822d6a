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
