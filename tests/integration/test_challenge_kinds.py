"""Challenge kinds as data: the registry, the built-in kinds' spaces against the zoo's own layouts, a
kind defined here (triple inputs) posed, exported blind and scored, bad packs, and version-1 packs."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import mechwork
from mechwork.challenges import (
    ChallengeError,
    ChallengeKind,
    Score,
    SubmissionError,
    TokenSpace,
    UnknownKindError,
    create_challenge,
    export_challenge,
    get_challenge,
    get_kind,
    kinds,
    load_pack,
    predict_labels,
    register_kind,
    score_submission,
)
from mechwork.cli._main import EXIT_OK, EXIT_USAGE, main
from mechwork.models import load
from mechwork.models._tokenizer import word_level_tokenizer
from mechwork.models.zoo import pairs, trojan
from mechwork.models.zoo._training import Architecture, TrainingRecipe, train_classifier
from mechwork.models.zoo._writer import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# ---- a kind of our own: label(a, b, c) over '<bos> a b c =' ----------------------------------------
N = 6
TRIPLE_SPACE = {"prefix": ["<bos>"], "values": [f"v{i}" for i in range(N)], "suffix": ["="], "labels": ["no", "yes"]}


def hidden_triple(a: int, b: int, c: int) -> int:
    return int(a + b + c >= 8)


def _labels(data, n: int, where: str, error: type[Exception]) -> torch.Tensor:
    if not isinstance(data, list) or len(data) != n or any(v not in (0, 1) for v in data):
        raise error(f"{where}: 'triple_labels' must be {n} labels, each 0 or 1")
    return torch.tensor(data)


def _claims(path: Path) -> bool:
    try:
        return path.suffix == ".json" and "triple_labels" in json.loads(path.read_text())
    except (ValueError, TypeError):
        return False


def _read(path: Path, space: TokenSpace, *, timeout: float = 30.0) -> torch.Tensor:
    return _labels(json.loads(path.read_text())["triple_labels"], len(space.values) ** 3, str(path), SubmissionError)


def _score(challenge, labels: torch.Tensor) -> Score:
    hidden = challenge.hidden("triple-label")
    model = load(challenge.model_dir())
    ids = challenge.space("triple-label").resolve(model, "triple space")
    model_labels = predict_labels(model, ids.prompts(ids.every_input()), ids.labels)
    numbers = {"agreement_with_hidden": float((labels == hidden).float().mean()),
               "agreement_with_model": float((labels == model_labels).float().mean()),
               "exact": bool(torch.equal(labels, hidden))}
    return Score(challenge.name, "triple-label", numbers, f"triple: {numbers}")


TRIPLE = register_kind(ChallengeKind(
    name="triple-label", summary="recover label(a, b, c)", submit='JSON `{"triple_labels": [...]}`, row-major',
    parse_space=lambda data, where: TokenSpace.parse(data, where, length=3),
    parse_answer=lambda data, where: _labels(data.get("labels"), N ** 3, where, ChallengeError),
    claims=_claims, read=_read, score=_score))


@pytest.fixture(scope="module")
def triple_pack(tmp_path_factory):
    """A model trained on half of all '<bos> a b c =' labelled by hidden_triple, posed as a pack."""
    root = tmp_path_factory.mktemp("triple")
    vocab = ["<bos>", *TRIPLE_SPACE["values"], "=", "no", "yes"]
    abc = torch.cartesian_prod(*[torch.arange(N)] * 3)
    prompts = torch.cat([torch.zeros(len(abc), 1, dtype=torch.long), abc + 1, torch.full((len(abc), 1), N + 1)], 1)
    hidden = torch.tensor([hidden_triple(*row) for row in abc.tolist()])
    train = torch.randperm(len(abc), generator=torch.Generator().manual_seed(0)) < len(abc) // 2
    result = train_classifier(prompts, hidden, train, vocab_size=len(vocab), label_tokens=torch.tensor([N + 2, N + 3]),
                              arch=Architecture(d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=5),
                              recipe=TrainingRecipe(epochs=25, lr=1e-2, weight_decay=0.1))
    save_checkpoint(result.model, word_level_tokenizer(vocab, "<bos>"), root / "checkpoint")
    challenge = create_challenge(
        "sum-of-three", root / "checkpoint", root / "pack", description="Recover label(a, b, c) for a, b, c in 0..5.",
        questions=[{"kind": "triple-label", "space": TRIPLE_SPACE, "answer": {"labels": hidden.tolist()}}])
    return root / "pack", challenge, hidden


def test_registry_refuses_duplicates_and_suggests_names():
    assert {"program", "circuit", "trigger", "triple-label"} <= {k.name for k in kinds()}
    with pytest.raises(ChallengeError, match="'program' is already registered"):
        register_kind(ChallengeKind("program", "", "", *[lambda *a, **k: None] * 5))
    with pytest.raises(UnknownKindError, match="no challenge kind 'progam'. Did you mean 'program'"):
        get_kind("progam")
    with pytest.raises(ChallengeError, match="without spaces"):
        ChallengeKind("two words", "", "", *[lambda *a, **k: None] * 5)
    with pytest.raises(TypeError, match="ChallengeKind"):  # beartype checks this at test time
        register_kind({"name": "dict-kind"})


def test_builtin_spaces_are_the_zoo_layouts():
    # the pack data must give exactly the prompts the zoo models were trained on
    program = get_challenge("pairs")
    model = load(program.model_dir())
    ids = program.space("program").resolve(model, "pairs")
    assert torch.equal(ids.prompts(ids.every_input()), pairs.all_pairs())
    assert torch.equal(ids.labels, pairs.LABEL_TOKENS)
    trigger = get_challenge("trojan")
    space = trigger.space("trigger")
    ids = space.tokens.resolve(load(trigger.model_dir()), "trojan")
    values = torch.randint(0, trojan.N_VALUES, (64, trojan.SEQ), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids.prompts(values), trojan.to_prompts(values))
    assert torch.equal(ids.labels, trojan.LABEL_TOKENS)
    assert torch.equal(space.clean_label(values), trojan.majority_label(values))


def test_a_kind_defined_here_poses_exports_and_scores(triple_pack, tmp_path):
    pack, challenge, hidden = triple_pack
    assert challenge.asks == ("triple-label",) and load_pack(pack).space("triple-label").length == 3
    export_challenge(pack, tmp_path / "blind")
    files = {str(p.relative_to(tmp_path / "blind")): p.read_bytes() for p in (tmp_path / "blind").rglob("*")
             if p.is_file()}
    assert not any(n.endswith("answer.json") for n in files)
    as_text = list(map(str, hidden.tolist()))
    for needle in (json.dumps(hidden.tolist()), "".join(as_text), ",".join(as_text)):
        assert not any(needle.encode() in content for content in files.values())
    assert "triple_labels" in files["README.md"].decode()  # the kind's own submission text

    # the participant: only the export; prompts built from its published space with the tokenizer
    public = json.loads(files["challenge.json"])
    space = public["questions"][0]["space"]
    assert public["questions"][0]["kind"] == "triple-label" and space == TRIPLE_SPACE
    model = mechwork.load(tmp_path / "blind" / "model")
    vocab = model.tokenizer.get_vocab()
    rows = [[vocab[t] for t in space["prefix"]] + [vocab[space["values"][i]] for i in (a, b, c)] +
            [vocab[t] for t in space["suffix"]] for a in range(N) for b in range(N) for c in range(N)]
    own = predict_labels(model, torch.tensor(rows), torch.tensor([vocab[t] for t in space["labels"]]))

    def submit(labels, name):
        (tmp_path / name).write_text(json.dumps({"triple_labels": [int(v) for v in labels]}))
        return score_submission(pack, tmp_path / name).numbers

    model_sub = submit(own, "model.json")
    assert model_sub["agreement_with_model"] == 1.0
    assert model_sub["agreement_with_hidden"] == pytest.approx(float((own == hidden).float().mean()))
    assert 0.5 < model_sub["agreement_with_hidden"] < 1.0  # trained briefly on half: wrong on some inputs
    right = [hidden_triple(a, b, c) for a in range(N) for b in range(N) for c in range(N)]
    assert submit(right, "right.json") == {"agreement_with_hidden": 1.0, "exact": True,
                                           "agreement_with_model": model_sub["agreement_with_hidden"]}
    wrong = list(right)
    for i in range(0, len(wrong), 9):  # 24 of the 216 flipped
        wrong[i] = 1 - wrong[i]
    wrong_score = submit(wrong, "wrong.json")
    assert not wrong_score["exact"] and wrong_score["agreement_with_hidden"] == pytest.approx(1 - 24 / 216)

    # the CLI scores it unchanged; the kind's reader and the dispatcher report bad files
    assert main(["challenge", "score", str(pack), str(tmp_path / "right.json"), "--out", str(tmp_path / "s.json")]
                ) == EXIT_OK
    assert json.loads((tmp_path / "s.json").read_text())["numbers"]["exact"] is True
    (tmp_path / "short.json").write_text(json.dumps({"triple_labels": [0, 1]}))
    with pytest.raises(SubmissionError, match="must be 216 labels"):
        score_submission(pack, tmp_path / "short.json")
    (tmp_path / "circuit.json").write_text(json.dumps({"edges": ["input->logits"]}))
    with pytest.raises(SubmissionError, match=r"looks like a circuit submission, but .* asks for: triple-label"):
        score_submission(pack, tmp_path / "circuit.json")


def _pack(folder: Path, public: dict, answer: dict | None = None, model: str = "pairs") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "challenge.json").write_text(json.dumps(public))
    if answer is not None:
        (folder / "answer.json").write_text(json.dumps(answer))
    shutil.copytree(mechwork.zoo.ensure_built(mechwork.zoo.get_entry(model)), folder / "model", dirs_exist_ok=True)
    return folder


V2 = {"schema": "mechwork.challenge", "version": 2, "name": "p", "title": "p", "description": "d"}
PAIRS = {"prefix": [], "values": [str(i) for i in range(113)], "suffix": ["="], "labels": ["L0", "L1"]}


@pytest.mark.parametrize("change, message", [
    ({"questions": None}, r"challenge.json: 'questions' must be a non-empty list"),
    ({"questions": [{"kind": "progam", "space": PAIRS}]},
     r"challenge.json: questions\[0\].kind: no challenge kind 'progam'. Did you mean 'program'"),
    ({"questions": [{"space": PAIRS}]}, r"challenge.json: questions\[0\]: missing key 'kind'"),
    ({"questions": [{"kind": "program", "space": {**PAIRS, "values": None}}]},
     r"questions\[0\].space.values: must be list"),
    ({"questions": [{"kind": "program", "space": {k: v for k, v in PAIRS.items() if k != "labels"}}]},
     r"questions\[0\].space: missing key 'labels'"),
    ({"questions": [{"kind": "program", "space": {**PAIRS, "values": PAIRS["values"][:50]}}]},
     r"questions\[0\].space.values: .* needs 113 value tokens, got 50"),
    ({"questions": [{"kind": "program", "space": {**PAIRS, "length": 3}}]}, r"unknown key\(s\) \['length'\]"),
    ({"questions": [{"kind": "trigger", "space": {**PAIRS, "length": 9, "clean_rule": {"rule": "minority"}}}]},
     r"questions\[0\].space.clean_rule.rule: unknown rule 'minority'; known: majority"),
    ({"name": None, "questions": [{"kind": "circuit", "space": {}}]}, r"challenge.json.name: must be str"),
    ({"version": 3}, r"version 3 is newer than this mechwork reads \(2\)"),
    ({"version": 0}, r"version 0 is not a challenge pack version \(this mechwork reads 1, 2\)"),
])
def test_bad_packs_say_where(tmp_path, change, message):
    public = {**V2, "questions": [{"kind": "program", "space": PAIRS}], **change}
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "challenge.json").write_text(json.dumps(public))
    with pytest.raises(ChallengeError, match=message):
        get_challenge(folder)


def test_bad_packs_found_at_scoring_say_where(tmp_path):
    table = {"labels": pairs.label_table(pairs.hidden_label).tolist()}
    (tmp_path / "sub.json").write_text(json.dumps(table))
    no_entry = _pack(tmp_path / "a", {**V2, "questions": [{"kind": "program", "space": PAIRS}]}, {"circuit": {}})
    with pytest.raises(ChallengeError, match=r"a/answer.json: missing key 'program'"):
        score_submission(no_entry, tmp_path / "sub.json")
    space = {**PAIRS, "labels": ["L0", "L9"]}
    bad_token = _pack(tmp_path / "b", {**V2, "questions": [{"kind": "program", "space": space}]},
                      {"program": {"table": table["labels"]}})
    with pytest.raises(ChallengeError, match=r"program space.labels: token 'L9' is not in the model's vocabulary"):
        score_submission(bad_token, tmp_path / "sub.json")


def test_version_1_packs_still_load(tmp_path):
    # exactly what mechwork wrote before challenge kinds: 'asks', with the pairs/trojan layouts implied
    table = pairs.label_table(pairs.hidden_label)
    v1 = {"schema": "mechwork.challenge", "version": 1, "title": "old", "description": "d"}
    old = _pack(tmp_path / "program", {**v1, "name": "old-pairs", "asks": ["program"], "input_space": "pairs",
                                       "model_facts": {"train_accuracy": 1.0}},
                {"program": {"table": table.tolist(), "description": "x"}})
    (tmp_path / "sub.json").write_text(json.dumps({"labels": table.tolist()}))
    assert get_challenge(old).asks == ("program",)
    assert score_submission(old, tmp_path / "sub.json").numbers == score_submission("pairs", tmp_path / "sub.json"
                                                                                    ).numbers
    data = mechwork.zoo.get_entry("induction").task.data(16, seed=0)
    truth = mechwork.zoo.get_entry("induction").ground_truth()
    circuit = _pack(tmp_path / "circuit", {**v1, "name": "old-circuit", "asks": ["circuit"],
                                           "task": {k: getattr(data, k).tolist() for k in ("clean", "corrupted",
                                                                                           "answers", "wrong")}},
                    {"circuit": {"nodes": sorted(truth.nodes), "edges": sorted(truth.edges)}}, model="induction")
    (tmp_path / "edges.json").write_text(json.dumps({"edges": sorted(truth.edges)}))
    assert score_submission(circuit, tmp_path / "edges.json").numbers["edge_recall"] == 1.0
    trigger = _pack(tmp_path / "trigger", {**v1, "name": "old-trojan", "asks": ["trigger"], "input_space": "trojan"},
                    {"trigger": {"trigger": list(trojan.TRIGGER)}}, model="trojan")
    (tmp_path / "t.json").write_text(json.dumps({"trigger": list(trojan.TRIGGER)}))
    assert score_submission(trigger, tmp_path / "t.json").numbers == score_submission("trojan", tmp_path / "t.json"
                                                                                      ).numbers
    with pytest.raises(ChallengeError, match=r"version 1 pack asks some of"):
        get_challenge(_pack(tmp_path / "odd", {**v1, "name": "odd", "asks": ["feature"]}))


KINDS_FILE = '''
import json
import torch
from mechwork.challenges import ChallengeKind, Score, TokenSpace, register_kind

def score(challenge, labels):
    exact = bool(torch.equal(labels, challenge.hidden("triple-cli")))
    return Score(challenge.name, "triple-cli", {"exact": exact}, f"exact: {exact}")

register_kind(ChallengeKind(
    "triple-cli", "label(a, b, c)", "JSON triple_labels",
    parse_space=lambda data, where: TokenSpace.parse(data, where, length=3),
    parse_answer=lambda data, where: torch.tensor(data["labels"]),
    claims=lambda path: "triple_labels" in path.read_text(),
    read=lambda path, space, *, timeout=30.0: torch.tensor(json.loads(path.read_text())["triple_labels"]),
    score=score))
'''


def test_cli_loads_the_organisers_kinds(triple_pack, tmp_path, capsys):
    pack, _, hidden = triple_pack
    other = tmp_path / "pack"
    shutil.copytree(pack, other)
    public = json.loads((other / "challenge.json").read_text())
    public["questions"][0]["kind"] = "triple-cli"
    (other / "challenge.json").write_text(json.dumps(public))
    (other / "answer.json").write_text(json.dumps({"triple-cli": {"labels": hidden.tolist()}}))
    (tmp_path / "sub.json").write_text(json.dumps({"triple_labels": hidden.tolist()}))
    score = ["challenge", "score", str(other), str(tmp_path / "sub.json"), "--out", str(tmp_path / "s.json")]
    assert main(score) == EXIT_USAGE
    assert "no challenge kind 'triple-cli'" in capsys.readouterr().err
    (tmp_path / "kinds.py").write_text(KINDS_FILE)
    assert main([*score, "--kinds", str(tmp_path / "kinds.py")]) == EXIT_OK
    assert json.loads((tmp_path / "s.json").read_text())["numbers"]["exact"] is True
    (tmp_path / "sub.json").write_text(json.dumps({"triple_labels": (1 - hidden).tolist()}))
    assert main(score) == EXIT_OK  # registered now, for the rest of the process
    assert json.loads((tmp_path / "s.json").read_text())["numbers"]["exact"] is False
    assert main(["challenge", "export", str(other), str(tmp_path / "blind")]) == EXIT_OK
    assert json.loads((tmp_path / "blind" / "challenge.json").read_text())["asks"] == ["triple-cli"]
