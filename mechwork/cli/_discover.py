"""``mechwork discover`` and ``mechwork verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._main import EXIT_FAILURE, EXIT_OK


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string, e.g. a checkpoint path
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_batch_size_argument(parser) -> None:
    """``--batch-size N``: prompts every method and evaluation runs at once (results do not change)."""
    parser.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                        help="run the prompts N at a time (memory set by N, not by the number of prompts; "
                             "results equal one batch's); default: all at once")


def add_task_arguments(parser) -> None:
    """``--model SPEC [--prompts FILE] --n-prompts N --seed S``, shared by every task command: a zoo model's
    own task makes the prompts, or a prompts file gives them (any model ``mechwork.load`` boots)."""
    parser.add_argument("--model", required=True,
                        help="zoo:NAME (its task makes the prompts), or a checkpoint folder / hub name with --prompts")
    parser.add_argument("--prompts", metavar="FILE", default=None,
                        help="JSON or CSV of clean, corrupted, answer, wrong (one row per prompt pair; each pair "
                             "the same number of tokens, single-token answers)")
    from ..tasks import tasks

    parser.add_argument("--task", metavar="NAME", default=None,
                        help=f"a standard task ({', '.join(t.name for t in tasks())}) made for the model's "
                             "tokenizer (instead of --prompts; not with zoo models)")
    parser.add_argument("--n-prompts", type=int, default=32, help="prompts the zoo or standard task draws")
    parser.add_argument("--seed", type=int, default=0)


def task_from_arguments(args: argparse.Namespace):
    """(zoo entry or None, model, task data) for the arguments :func:`add_task_arguments` added; the zoo
    entry (ground truth and all) only when its own task makes the prompts."""
    from ..experiments._prompts import PromptTask, read_prompts_file
    from ..hooks import InputError
    from ..models import load, zoo

    if getattr(args, "task", None) is not None:
        return None, *_standard_task(args)
    if args.prompts is not None:
        prompts = read_prompts_file(args.prompts)  # before loading: a bad file fails fast
        model = load(args.model)
        return None, model, PromptTask(model, prompts, args.prompts)
    if not args.model.startswith("zoo:"):
        raise InputError(f"--model {args.model!r}: give the prompts with --prompts FILE (JSON or CSV of clean, "
                         "corrupted, answer, wrong) or a standard task with --task NAME (see --help); only zoo "
                         "models bring a task of their own")
    entry = zoo.get_entry(args.model[4:])
    return entry, load(args.model), entry.task.data(args.n_prompts, seed=args.seed)


def _standard_task(args: argparse.Namespace):
    """(model, task data) for ``--task NAME``: the standard task's prompts for the model's tokenizer; what the
    single-token filter kept goes to stderr."""
    import sys

    from ..experiments._prompts import PromptTask
    from ..hooks import InputError
    from ..models import load
    from ..tasks import generate, get_task

    if args.prompts is not None:
        raise InputError(f"--task {args.task!r} and --prompts {args.prompts!r}: give one of them")
    if args.model.startswith("zoo:"):
        raise InputError(f"--task {args.task!r} with --model {args.model!r}: a zoo model brings its own task; "
                         "drop --task, or use a checkpoint folder or hub name")
    get_task(args.task)  # an unknown name fails before the model loads
    model = load(args.model)
    prompts = generate(args.task, model, args.n_prompts, args.seed)
    print(f"mechwork: {prompts.report.summary()}", file=sys.stderr)
    return model, PromptTask(model, prompts.lists(), f"--task {args.task}")


def _metric_key(args: argparse.Namespace) -> str:
    """``--metric``, else the standard task's own metric, else the logit difference."""
    from ..tasks import get_task

    if args.metric is not None:
        return args.metric
    return get_task(args.task).metric if getattr(args, "task", None) else "logit_diff"


def run_discover(args: argparse.Namespace) -> int:
    from ..discovery import CircuitRequest, find_circuit

    entry, model, data = task_from_arguments(args)
    truth = entry.ground_truth() if entry is not None else None
    options = _options(args.option)
    if args.progress and args.method in ("acdc", "exact"):
        options.setdefault("progress", True)
    circuit = find_circuit(model, data, args.method, metric=_metric_key(args), ablation=args.ablation,
                           positions=args.positions, request=CircuitRequest(args.select, args.value, args.target),
                           truth=truth if getattr(truth, "kind", "") == "circuit" else None,
                           task_name=entry.name if entry is not None else args.task or Path(args.prompts).stem,
                           seed=args.seed, batch_size=args.batch_size, **options)
    path = circuit.save(args.out)
    f = circuit.faithfulness
    print(f"{args.method} on {args.model}: {circuit.n_edges} edges, faithfulness {f['value']:.3f}, "
          f"CPR {f['curve']['cpr']:.3f}, CMD {f['curve']['cmd']:.3f}")
    if circuit.ground_truth:
        g = circuit.ground_truth
        print(f"against the planted circuit: edge ROC AUC {g['edge_roc_auc']:.3f}, node ROC AUC "
              f"{g['node_roc_auc']:.3f}, precision {g['precision_at_size']:.2f}, recall {g['recall_at_size']:.2f}")
    print(f"wrote {path}")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    from ..discovery import Circuit, verify

    result = verify(Circuit.load(args.circuit), tolerance=args.tolerance, score_tolerance=args.score_tolerance,
                    rederive=not args.faithfulness_only)
    print(result.message())
    return EXIT_OK if result.ok else EXIT_FAILURE


def add_commands(sub) -> None:
    from ..discovery import ABLATIONS, METRICS, methods

    names = [m.name for m in methods()]
    d = sub.add_parser("discover", help="find a circuit with a discovery method and save it as JSON",
                       epilog="example: mechwork discover --model zoo:induction --method acdc --out c.json\n"
                              "your own checkpoint and prompts: mechwork discover --model ./my-checkpoint "
                              "--prompts pairs.csv --method eap --out c.json\n"
                              "a standard task: mechwork discover --model gpt2 --task ioi --method eap --out c.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(d)
    d.add_argument("--method", required=True, choices=names)
    d.add_argument("--out", required=True, help="circuit JSON to write")
    d.add_argument("--metric", default=None, choices=METRICS,
                   help="default: the standard task's own metric (--task), else logit_diff")
    d.add_argument("--ablation", default="corrupted", choices=ABLATIONS)
    d.add_argument("--positions", action="store_true", help="resolve edges by token position")
    d.add_argument("--select", default="auto", choices=("auto", "top-n", "threshold", "greedy"))
    d.add_argument("--value", type=float, default=None, help="n for top-n/greedy, tau for threshold")
    d.add_argument("--target", type=float, default=0.9, help="faithfulness the 'auto' circuit must reach")
    d.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. threshold=0.05 or steps=10 (repeatable)")
    d.add_argument("--progress", action="store_true")
    add_batch_size_argument(d)
    d.set_defaults(func=run_discover)
    v = sub.add_parser("verify", help="re-derive every number a circuit file states (scores, circuit, faithfulness, "
                                      "curve, ground truth); exit 1 if any line does not reproduce",
                       epilog="example: mechwork verify circuits/induction-acdc.json")
    v.add_argument("circuit")
    v.add_argument("--tolerance", type=float, default=1e-4, help="for faithfulness values")
    v.add_argument("--score-tolerance", type=float, default=1e-4,
                   help="for edge scores, relative to the largest recorded score (at least 1)")
    v.add_argument("--faithfulness-only", action="store_true",
                   help="do not rerun the method: check the faithfulness lines only")
    v.set_defaults(func=run_verify)


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import BenchSettings, run_leaderboard
    from ._executor_args import executor_from_arguments

    settings = BenchSettings(n_prompts=args.n_prompts, seed=args.seed, batch_size=args.batch_size)
    executor = executor_from_arguments(args)
    try:
        run_leaderboard(args.out, models=args.models or None, methods=args.methods or None, settings=settings,
                        executor=executor)
    finally:
        if executor is not None:
            executor.close()
    print(f"wrote {args.out}/leaderboard.md, leaderboard.csv and leaderboard.html")
    return EXIT_OK


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="every discovery method on every zoo circuit -> leaderboard (resumable)",
                       epilog="example: mechwork bench --out bench_results")
    b.add_argument("--out", required=True, help="output folder; finished cells there are reused")
    b.add_argument("--models", nargs="*", default=[], help="zoo names (default: every zoo model with a circuit)")
    b.add_argument("--methods", nargs="*", default=[], help="method names (default: all registered)")
    b.add_argument("--n-prompts", type=int, default=32)
    b.add_argument("--seed", type=int, default=0)
    add_batch_size_argument(b)
    from ._executor_args import add_executor_arguments

    add_executor_arguments(b)
    b.set_defaults(func=run_bench)
