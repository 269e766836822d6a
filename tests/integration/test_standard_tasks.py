"""Standard tasks (IOI, greater-than, docstring, SVA) for any tokenizer: well-formed pairs, the single-token
filter and its counts, seeds, a broken generator the checks catch, and the tasks end to end (experiment
file and CLI) on a tiny random GPT-2 checkpoint whose tokenizer is built here (no hub)."""

import dataclasses
import re

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mechwork.cli._main import EXIT_OK, EXIT_USAGE, main
from mechwork.discovery import Circuit, make_metric
from mechwork.experiments import ExperimentError, parse_experiment, run_experiment
from mechwork.metrics import ThresholdProbDiff
from mechwork.tasks import (
    StandardTask,
    TaskError,
    UnknownTaskError,
    _docstring,
    _greater_than,
    _ioi,
    _sva,
    check_prompt_set,
    generate,
    get_task,
    register_task,
    tasks,
    year_tokens,
)

# words, then two-digit groups ("1732" -> "17", "32", as GPT-2 splits years)
PRE = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated")])
NAMES = ("ioi", "greater-than", "docstring", "sva")


def _texts() -> list[str]:
    templates = [*_ioi.TEMPLATES, _greater_than.TEMPLATE, _docstring.TEMPLATE, *_sva.TEMPLATES]
    words = [*_ioi.NAMES, *_ioi.PLACES, *_ioi.OBJECTS, *_greater_than.NOUNS, *_docstring.NAMES,
             *_docstring.FUNCTIONS, *_docstring.WORDS, *(w for pair in _sva.NOUNS + _sva.VERBS for w in pair)]
    return [re.sub(r"\{\w+(:02d)?\}", " x ", t) for t in templates] + words + [f"{y:02d}" for y in range(100)]


def make_tokenizer(split: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over every word the tasks use: words in ``split`` become two tokens ("Je",
    "##ssica"), words in ``drop`` the unknown token."""
    pieces = sorted({p for t in _texts() for p, _ in PRE.pre_tokenize_str(t)} - set(split) - set(drop))
    pieces += [w[:2] for w in split] + ["##" + w[2:] for w in split]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[BOS]", "[UNK]", *pieces]))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = PRE
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[BOS]",
                                   pad_token="[BOS]")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def changes_answer(task: str, tok, prompts) -> None:
    """Per task, by construction: the corrupted prompt no longer supports the clean answer."""
    for clean, corrupted, answer, wrong, d in zip(prompts.clean, prompts.corrupted, prompts.answers, prompts.wrong,
                                                  prompts.details, strict=True):
        a, w = ids(tok, answer)[0], ids(tok, wrong)[0]
        if task == "ioi":
            assert (answer, wrong) == (f" {d['io']}", f" {d['s']}")
            assert a in ids(tok, clean) and w in ids(tok, clean)
            if d["counterfactual"] == "abc":
                assert a not in ids(tok, corrupted) and w not in ids(tok, corrupted), corrupted
            else:  # s2_io_flip: S2 is now the IO, so the answer flips to S
                assert corrupted.count(d["io"]) == 2 and corrupted.count(d["s"]) == 1
        elif task == "greater-than":
            century, yy = d["century"], d["yy"]
            assert 2 <= yy <= 98 and f" {century}{yy:02d} " in clean and f" {century}01 " in corrupted
            assert (answer, wrong) == (f"{yy + 1:02d}", f"{yy:02d}")
        elif task == "docstring":
            assert a not in ids(tok, corrupted) and answer.strip() == d["params"][2]
            assert clean.count(f":param {d['params'][0]}:") == 1 and f":param {answer.strip()}" not in clean
        else:  # sva: the corrupted subject is the other number, so the other verb form agrees with it
            assert d["corrupted_subject"] != d["subject"]
            assert corrupted.split()[1] == d["corrupted_subject"] and clean.split()[1] == d["subject"]
            assert (answer.strip(), wrong.strip()) == (d["verb"][d["number"] == "plural"],
                                                       d["verb"][d["number"] == "singular"])


@pytest.mark.parametrize("name", NAMES)
def test_pairs_are_equal_length_with_single_token_answers_and_change_the_answer(name, tokenizer):
    prompts = generate(name, tokenizer, 24, seed=1)
    assert len(prompts) == 24 and prompts.report.n_prompts == 24 and len(set(prompts.clean)) == 24
    check_prompt_set(tokenizer, prompts)
    for clean, corrupted, answer, wrong in zip(prompts.clean, prompts.corrupted, prompts.answers, prompts.wrong,
                                               strict=True):
        assert len(ids(tokenizer, clean)) == len(ids(tokenizer, corrupted))
        for text in (answer, wrong):
            assert len(ids(tokenizer, text)) == 1 and ids(tokenizer, text) != [tokenizer.unk_token_id]
        assert clean != corrupted and answer != wrong
    # one length for the whole set: the metric reads the same (last) position of every prompt
    assert {len(ids(tokenizer, p)) for p in prompts.clean + prompts.corrupted} == {prompts.report.length}
    changes_answer(name, tokenizer, prompts)
    assert prompts.metric == get_task(name).metric


def test_word_lists_do_not_overlap():
    """A parameter name that is also a description word would leak the answer into the corrupted prompt."""
    assert not set(_docstring.NAMES) & (set(_docstring.WORDS) | set(_docstring.FUNCTIONS))
    assert not set(_ioi.NAMES) & (set(_ioi.PLACES) | set(_ioi.OBJECTS))
    assert not {w for p in _sva.NOUNS for w in p} & {w for p in _sva.VERBS for w in p}


def test_ioi_mib_counterfactual_flips_the_second_subject(tokenizer):
    prompts = _ioi.ioi(tokenizer, 12, seed=0, counterfactual="s2_io_flip")
    check_prompt_set(tokenizer, prompts)
    changes_answer("ioi", tokenizer, prompts)
    with pytest.raises(TaskError, match="unknown counterfactual 'abd'"):
        _ioi.ioi(tokenizer, 4, counterfactual="abd")


def test_seeds_reproduce_and_differ(tokenizer):
    for name in NAMES:
        assert generate(name, tokenizer, 8, seed=3) == generate(name, tokenizer, 8, seed=3)
        assert generate(name, tokenizer, 8, seed=3).clean != generate(name, tokenizer, 8, seed=4).clean


def test_the_filter_drops_multi_token_and_unknown_words_and_counts_them():
    tok = make_tokenizer(split=("Jessica", "Mary", "children", "load"), drop=("Bob", "45"))
    assert len(ids(tok, " Jessica")) == 2 and ids(tok, " Bob") == [tok.unk_token_id]
    ioi = generate("ioi", tok, 40, seed=0)
    (names,) = ioi.report.word_lists
    assert (names.total, names.kept, set(names.dropped)) == (36, 33, {"Jessica", "Mary", "Bob"})
    assert not any(w in p for w in ("Jessica", "Mary", "Bob") for p in ioi.clean + ioi.corrupted)
    assert "names 33/36 single tokens (dropped: " in ioi.report.summary()
    gt = generate("greater-than", tok, 40, seed=0)
    centuries, years = gt.report.word_lists
    assert (centuries.kept, years.total, years.kept) == (7, 7 * 97, 7 * 97 - 14)  # YY = 44 (44 + 1) and 45, x 7
    assert "1745" in years.dropped and "1744" in years.dropped and not {d["yy"] for d in gt.details} & {44, 45}
    with pytest.raises(TaskError, match="1 are not \\(45\\)"):
        year_tokens(tok)
    doc = generate("docstring", tok, 8, seed=0)
    assert doc.report.word_lists[0].dropped == ("load",) and not any(" load," in p for p in doc.clean)
    sva = generate("sva", tok, 8, seed=0)
    assert sva.report.word_lists[0].dropped == ("child/children",) and sva.report.word_lists[1].kept == 10
    for prompts in (ioi, gt, doc, sva):
        check_prompt_set(tok, prompts)


def test_too_few_survivors_or_too_many_prompts_is_an_error():
    few = make_tokenizer(split=_ioi.NAMES[4:])
    with pytest.raises(TaskError, match="only 4 of 36 names are single tokens.*at least 5"):
        generate("ioi", few, 8)
    one_each = make_tokenizer(drop=tuple(w for pair in _sva.NOUNS[1:] + _sva.VERBS[1:] for w in pair))
    # 2 numbers x 2 templates with an attractor x its 2 forms: 8 distinct prompts of 5 tokens (and 2 of 2)
    assert generate("sva", one_each, 8).report.length == 5
    with pytest.raises(TaskError, match="could make only 8 distinct well-formed prompt pairs of one token length "
                                        "of the 9"):
        generate("sva", one_each, 9)
    with pytest.raises(TaskError, match="positive integer"):
        generate("ioi", make_tokenizer(), 0)


def test_unknown_names_get_suggestions_and_duplicates_are_refused():
    with pytest.raises(UnknownTaskError, match="did you mean 'ioi'"):
        get_task("iio")
    with pytest.raises(UnknownTaskError, match="'greater-than'"):
        get_task("greater_than")
    with pytest.raises(TaskError, match="already registered"):
        register_task(StandardTask("ioi", "again", _ioi.ioi))
    assert [t.name for t in tasks()] == sorted(NAMES)


def test_a_broken_generator_is_caught(tokenizer, monkeypatch):
    """Two broken variants: an IOI corruption that keeps the names (the answer does not change) and one
    that puts a two-token name in the corrupted prompt (unequal lengths)."""

    def keep_names(names, counterfactual):
        real = _ioi.Pair

        def sample(rng):
            pair = good(rng)
            return real(pair.clean, pair.clean.replace(" to", " toward"), pair.answer, pair.wrong, pair.details)

        good = original(names, counterfactual)
        return sample

    original = _ioi._sampler
    monkeypatch.setattr(_ioi, "_sampler", keep_names)
    broken = generate("ioi", tokenizer, 8)
    check_prompt_set(tokenizer, broken)  # well formed: the equal-length check alone does not see it
    with pytest.raises(AssertionError):
        changes_answer("ioi", tokenizer, broken)
    monkeypatch.undo()

    split = make_tokenizer(split=("Zoe",))
    prompts = generate("ioi", split, 8)
    name = prompts.details[0]["corrupted_names"][2]
    unequal = dataclasses.replace(prompts, corrupted=(prompts.corrupted[0].replace(f" {name} ", " Zoe "),
                                                      *prompts.corrupted[1:]))
    with pytest.raises(TaskError, match=r"pair 1: clean is (\d+) tokens, corrupted (?!\1)\d+"):
        check_prompt_set(split, unequal)
    ragged = dataclasses.replace(prompts, clean=(prompts.clean[0] + " the", *prompts.clean[1:]),
                                 corrupted=(prompts.corrupted[0] + " the", *prompts.corrupted[1:]))
    with pytest.raises(TaskError, match="2 different token lengths"):
        check_prompt_set(split, ragged)


def test_threshold_probability_difference():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    metric = ThresholdProbDiff(position=-1, candidates=(3, 2, 1, 0), cutoff=torch.tensor([0, 1]))
    # prompt 1: the candidates after index 0 are tokens 2, 1, 0 (0.6) against token 3 (0.4); prompt 2: tokens
    # 1, 0 (0.3 + 0.4) against tokens 3, 2 (0.1 + 0.2)
    assert float(metric.score(logits)) == pytest.approx(((0.6 - 0.4) + (0.7 - 0.3)) / 2, abs=1e-6)
    four = ThresholdProbDiff(position=-1, candidates=(0, 1, 2, 3), cutoff=torch.tensor([0, 1, 2, 3]))
    half = four.for_rows(slice(2, 4), 4)  # as many prompts as candidates: only the cutoff is per prompt
    assert half.candidates == (0, 1, 2, 3) and half.cutoff.tolist() == [2, 3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=4,
                        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_greater_than_metric_is_rebuilt_from_the_recorded_tokens(checkpoint, tokenizer):
    import mechwork
    from mechwork.experiments._prompts import PromptTask

    model = mechwork.load(str(checkpoint))
    prompts = generate("greater-than", model, 6, seed=2)
    data = PromptTask(model, prompts.lists(), "test")
    metric = make_metric("greater_than_prob_diff", model, data)
    assert metric.candidates == year_tokens(tokenizer)
    assert metric.cutoff.tolist() == [d["yy"] for d in prompts.details]
    with torch.no_grad():
        logits = model(data.clean)
    probs, years = logits[:, -1].softmax(-1), list(metric.candidates)
    expected = [probs[i, years[d["yy"] + 1:]].sum() - probs[i, years[:d["yy"] + 1]].sum()
                for i, d in enumerate(prompts.details)]
    assert float(metric(logits)) == pytest.approx(float(torch.stack(expected).mean()), abs=1e-6)


@pytest.mark.parametrize(("task", "metric"), [("ioi", "logit_diff"), ("greater-than", "greater_than_prob_diff")])
def test_discover_with_a_standard_task_then_verify(task, metric, checkpoint, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", "--model", str(checkpoint), "--task", task, "--n-prompts", "6", "--method", "eap",
                 "--select", "top-n", "--value", "5", "--out", str(out)]) == EXIT_OK
    assert f"mechwork: {task}: 6 prompt pairs of " in capsys.readouterr().err
    circuit = Circuit.load(out)
    assert (circuit.task["name"], circuit.task["metric"], circuit.n_edges) == (task, metric, 5)
    assert len(circuit.task["prompts"]["clean"]) == 6
    # the greater-than metric is rebuilt from the file's tokens: re-derive everything for it
    assert main(["verify", str(out), *(["--faithfulness-only"] if task == "ioi" else [])]) == EXIT_OK


def test_task_option_errors(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "c.json")
    base = ["discover", "--method", "eap", "--out", out]
    (tmp_path / "p.json").write_text("[]")
    assert main([*base, "--model", str(checkpoint), "--task", "iio"]) == EXIT_USAGE
    assert "did you mean 'ioi'" in capsys.readouterr().err
    assert main([*base, "--model", str(checkpoint), "--task", "ioi", "--prompts", str(tmp_path / "p.json")]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*base, "--model", "zoo:induction", "--task", "ioi"]) == EXIT_USAGE
    assert "a zoo model brings its own task" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


EXPERIMENT = """
name = "ioi-tiny"
[model]
spec = "{spec}"
[task]
{task}
[[step]]
kind = "discover"
name = "eap"
method = "eap"
select = "top-n"
value = 5
report = false
[[step]]
kind = "verify"
circuit = "eap"
faithfulness_only = true
"""


def test_experiment_file_with_a_builtin_task(checkpoint, tmp_path):
    path = tmp_path / "ioi.toml"
    path.write_text(EXPERIMENT.format(spec=checkpoint, task='builtin = "ioi"\nn_prompts = 6\nseed = 5'))
    run_experiment(path, tmp_path / "out", progress=False)
    circuit = Circuit.load(tmp_path / "out" / "eap" / "circuit.json")
    assert circuit.task["name"] == "ioi" and circuit.provenance["seed"] == 5 and circuit.n_edges == 5
    assert circuit.task["prompts"]["answers"] == [ids(make_tokenizer(), a)[0] for a in
                                                  generate("ioi", make_tokenizer(), 6, seed=5).answers]


@pytest.mark.parametrize(("task", "message"), [
    ('builtin = "ioi"\nzoo = "induction"', "[task] has zoo and builtin; use one"),
    ('builtin = "gretaer-than"', "key 'builtin': unknown standard task 'gretaer-than'; did you mean 'greater-than'"),
    ('builtin = "ioi"\nn_prompts = 0', "key 'n_prompts' must be a positive integer"),
    ('zoo = "induction"\nseed = 1', "key 'seed' is for builtin tasks"),
    ('prompts = "p.json"\nbuiltin = "sva"', "[task] has builtin and prompts; use one"),
])
def test_builtin_task_errors_say_where(task, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(EXPERIMENT.format(spec="zoo:induction", task=task))
    with pytest.raises(ExperimentError) as exc:
        parse_experiment(path)
    assert str(path) in str(exc.value) and message in str(exc.value), exc.value
