"""``mechwork challenge list|export|score``."""

from __future__ import annotations

import argparse
import textwrap

from ._main import EXIT_OK


def _load_kinds(args: argparse.Namespace) -> None:
    """Import the modules or run the Python files named by --kinds: they register challenge kinds of the
    organiser's own (trusted code, unlike submissions) before a pack that asks them is loaded."""
    import importlib
    import runpy
    from pathlib import Path

    for source in getattr(args, "kinds", None) or []:
        if source.endswith(".py"):
            if not Path(source).is_file():
                raise ValueError(f"--kinds {source}: no such file")
            runpy.run_path(source, run_name="mechwork_kinds")
        else:
            importlib.import_module(source)


def _list(args: argparse.Namespace) -> int:
    from ..challenges import builtin_listing

    for name, asks, title, description in builtin_listing():  # builds no model
        print(f"{name}  [asks for: {', '.join(asks)}]  {title}")
        print(textwrap.fill(description, 100, initial_indent="    ", subsequent_indent="    "))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from ..challenges import export_challenge

    _load_kinds(args)
    files = export_challenge(args.name, args.dir)
    print(f"exported {args.name} ({len(files)} files, no answer) to {args.dir}")
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from ..challenges import score_submission

    _load_kinds(args)
    score = score_submission(args.name, args.submission, timeout=args.timeout, trust=args.trust)
    print(score.summary)
    if args.out:
        atomic_write_json(args.out, score.to_dict())
        print(f"wrote {args.out}")
    return EXIT_OK


def _pose(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from ..challenges import create_circuit_challenge, create_program_challenge, create_tracr_challenge
    from ..challenges._submissions import read_table, run_program

    if sum(map(bool, (args.labels, args.circuit, args.tracr))) != 1:
        raise ValueError("give either --labels (a program challenge), --circuit with --model (a circuit challenge) "
                         "or --tracr (recover a compiled RASP program, blind)")
    if args.tracr:
        challenge = create_tracr_challenge(args.name, args.tracr, args.out)
    elif args.labels:
        path = Path(args.labels)
        # the organiser's own program: sandboxed where a sandbox works, trusted (run anyway) where not
        table = run_program(path, timeout=args.timeout, trust=True) if path.suffix == ".py" else read_table(path)
        from ..models.zoo import pairs

        recipe = pairs.DEFAULT_RECIPE if args.epochs is None else replace(pairs.DEFAULT_RECIPE, epochs=args.epochs)
        challenge = create_program_challenge(args.name, table, args.out, recipe=recipe, hint=args.hint,
                                             answer_text=args.answer_text)
    else:
        if not args.model or not args.task_text:
            raise ValueError("a circuit challenge needs --model (the checkpoint) and --task-text (what the task is)")
        challenge = create_circuit_challenge(args.name, args.model, args.circuit, args.out, task_text=args.task_text)
    print(f"posed {challenge.name!r} ({', '.join(challenge.asks)}) in {args.out}; share it with "
          f"`mechwork challenge export {args.out} DIR`, score with `mechwork challenge score {args.out} FILE`")
    return EXIT_OK


def add_commands(sub) -> None:
    c = sub.add_parser("challenge", help="hidden-mechanism challenges: list, export blind, score submissions",
                       epilog="example: mechwork challenge score pairs my_label.py")
    csub = c.add_subparsers(dest="challenge_command", required=True, parser_class=sub._parser_class)
    csub.add_parser("list", help="the built-in challenges and what they ask",
                    epilog="example: mechwork challenge list").set_defaults(func=_list)
    e = csub.add_parser("export", help="write only what a participant may see (weights, description, starter)",
                        epilog="example: mechwork challenge export trojan trojan_challenge/")
    e.add_argument("name", help="a built-in challenge or a challenge pack folder")
    e.add_argument("dir")
    e.add_argument("--kinds", action="append", metavar="MODULE_OR_FILE",
                   help="a Python module or .py file that registers the pack's own challenge kinds (repeatable)")
    e.set_defaults(func=_export)
    s = csub.add_parser("score", help="score a submission (program .py/.json/.csv, circuit .json, trigger .json)",
                        epilog="example: mechwork challenge score trojan trigger.json --out score.json")
    s.add_argument("name")
    s.add_argument("submission")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds a submitted program may run (default 30)")
    s.add_argument("--out", default=None, help="write the score as JSON")
    s.add_argument("--trust", action="store_true",
                   help="where no sandbox works on this machine, run a submitted program anyway, unisolated "
                        "(refused otherwise; the score records isolation: unisolated)")
    s.add_argument("--kinds", action="append", metavar="MODULE_OR_FILE",
                   help="a Python module or .py file that registers the pack's own challenge kinds (repeatable)")
    s.set_defaults(func=_score)
    p = csub.add_parser("pose", help="pose a new challenge: a labelling program (trains a model), a circuit, or a "
                        "RASP program compiled by tracr", epilog="examples: mechwork challenge pose less-than --labels "
                        "label.py --out my_challenge/; mechwork challenge pose mystery --tracr program.py --out pack/")
    p.add_argument("name")
    p.add_argument("--out", required=True, help="the challenge pack folder to write (keep it: it holds the answer)")
    p.add_argument("--labels", help="label(a, b) as a .py file, or a 113 x 113 table (.json/.csv)")
    p.add_argument("--circuit", help="a mechwork circuit file whose edges are the answer")
    p.add_argument("--tracr", metavar="PROGRAM.py", help="a RASP program file (as for `mechwork zoo tracr`): the pack "
                   "holds the compiled model under NAME alone, the program's outputs are the hidden answer")
    p.add_argument("--model", help="with --circuit: the model (zoo:NAME or a checkpoint folder)")
    p.add_argument("--task-text", default="", help="with --circuit: the public description of the task")
    p.add_argument("--hint", default="", help="with --labels: extra public text for participants")
    p.add_argument("--answer-text", default="", help="with --labels: the answer in words (kept hidden)")
    p.add_argument("--epochs", type=int, default=None, help="with --labels: training epochs (default recipe's)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds the label program may run")
    p.set_defaults(func=_pose)
