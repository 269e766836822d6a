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


def add_task_arguments(parser) -> None:
    """``--model SPEC [--prompts FILE] --n-prompts N --seed S``, shared by every task command: a zoo model's
    own task makes the prompts, or a prompts file gives them (any model ``mechwork.load`` boots)."""
    parser.add_argument("--model", required=True,
                        help="zoo:NAME (its task makes the prompts), or a checkpoint folder / hub name with --prompts")
    parser.add_argument("--prompts", metavar="FILE", default=None,
                        help="JSON or CSV of clean, corrupted, answer, wrong (one row per prompt pair; each pair "
                             "the same number of tokens, single-token answers)")
    parser.add_argument("--n-prompts", type=int, default=32, help="prompts the zoo task draws")
    parser.add_argument("--seed", type=int, default=0)


def task_from_arguments(args: argparse.Namespace):
    """(zoo entry or None, model, task data) for the arguments :func:`add_task_arguments` added; the zoo
    entry (ground truth and all) only when its own task makes the prompts."""
    from ..experiments._prompts import PromptTask, read_prompts_file
    from ..hooks import InputError
    from ..models import load, zoo

    if args.prompts is not None:
        prompts = read_prompts_file(args.prompts)  # before loading: a bad file fails fast
        model = load(args.model)
        return None, model, PromptTask(model, prompts, args.prompts)
    if not args.model.startswith("zoo:"):
        raise InputError(f"--model {args.model!r}: give the prompts with --prompts FILE (JSON or CSV of clean, "
                         "corrupted, answer, wrong); only zoo models bring a task of their own")
    entry = zoo.get_entry(args.model[4:])
    return entry, load(args.model), entry.task.data(args.n_prompts, seed=args.seed)


def run_discover(args: argparse.Namespace) -> int:
    from ..discovery import CircuitRequest, find_circuit

    entry, model, data = task_from_arguments(args)
    truth = entry.ground_truth() if entry is not None else None
    options = _options(args.option)
    if args.progress and args.method in ("acdc", "exact"):
        options.setdefault("progress", True)
    circuit = find_circuit(model, data, args.method, metric=args.metric, ablation=args.ablation,
                           positions=args.positions, request=CircuitRequest(args.select, args.value, args.target),
                           truth=truth if getattr(truth, "kind", "") == "circuit" else None,
                           task_name=entry.name if entry is not None else Path(args.prompts).stem,
                           seed=args.seed, **options)
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
                              "--prompts pairs.csv --method eap --out c.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(d)
    d.add_argument("--method", required=True, choices=names)
    d.add_argument("--out", required=True, help="circuit JSON to write")
    d.add_argument("--metric", default="logit_diff", choices=METRICS)
    d.add_argument("--ablation", default="corrupted", choices=ABLATIONS)
    d.add_argument("--positions", action="store_true", help="resolve edges by token position")
    d.add_argument("--select", default="auto", choices=("auto", "top-n", "threshold", "greedy"))
    d.add_argument("--value", type=float, default=None, help="n for top-n/greedy, tau for threshold")
    d.add_argument("--target", type=float, default=0.9, help="faithfulness the 'auto' circuit must reach")
    d.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. threshold=0.05 or steps=10 (repeatable)")
    d.add_argument("--progress", action="store_true")
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

    settings = BenchSettings(n_prompts=args.n_prompts, seed=args.seed)
    run_leaderboard(args.out, models=args.models or None, methods=args.methods or None, settings=settings)
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
    b.set_defaults(func=run_bench)
