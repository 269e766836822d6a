"""``mechwork challenge list|export|score``."""

from __future__ import annotations

import argparse
import json
import textwrap

from ._main import EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from ..challenges import builtin_names, get_challenge

    for name in builtin_names():
        c = get_challenge(name)
        print(f"{name}  [asks for: {', '.join(c.asks)}]  {c.title}")
        print(textwrap.fill(c.description, 100, initial_indent="    ", subsequent_indent="    "))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from ..challenges import export_challenge

    files = export_challenge(args.name, args.dir)
    print(f"exported {args.name} ({len(files)} files, no answer) to {args.dir}")
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..challenges import score_submission

    score = score_submission(args.name, args.submission, timeout=args.timeout)
    print(score.summary)
    if args.out:
        atomic_write_text(args.out, json.dumps(score.to_dict(), indent=1))
        print(f"wrote {args.out}")
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
    e.set_defaults(func=_export)
    s = csub.add_parser("score", help="score a submission (program .py/.json/.csv, circuit .json, trigger .json)",
                        epilog="example: mechwork challenge score trojan trigger.json --out score.json")
    s.add_argument("name")
    s.add_argument("submission")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds a submitted program may run (default 30)")
    s.add_argument("--out", default=None, help="write the score as JSON")
    s.set_defaults(func=_score)
