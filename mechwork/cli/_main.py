"""``mechwork`` sub-commands. Exit codes: 0 success, 2 bad usage or input, 1 failure."""

from __future__ import annotations

import argparse
import sys
import textwrap

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 on usage errors; keep its message format
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _zoo_list(args: argparse.Namespace) -> int:
    from ..models import zoo

    rows = [(e.name, e.kind, e.ground_truth_kind, e.task.description, e.summary) for e in zoo.entries()]
    for name, kind, gt, task, summary in rows:
        built = "built" if zoo.is_built(zoo.get_entry(name)) else "builds on first use"
        print(f"zoo:{name}  [{kind}; ground truth: {gt}; {built}]")
        print(textwrap.fill(summary, 100, initial_indent="    ", subsequent_indent="    "))
        print(textwrap.fill(f"task: {task}", 100, initial_indent="    ", subsequent_indent="    "))
    return EXIT_OK


def _zoo_build(args: argparse.Namespace) -> int:
    from ..models import zoo

    names = args.names or [e.name for e in zoo.entries()]
    for name in names:
        entry = zoo.get_entry(name)
        path = zoo.ensure_built(entry, verbose=True)
        print(f"zoo:{name}: {path} {zoo.build_facts(entry)}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.out)
    print("head-output patching on zoo:induction (normalised: 1 = restores the clean answer):")
    for coords, value in result.heads.top(3):
        print(f"  layer {coords['layer']} head {coords['head']}: {value:+.3f}")
    c = result.circuit
    print(f"ACDC circuit: {c.n_edges} edges, faithfulness {c.faithfulness['value']:.3f}, edge ROC AUC against the "
          f"planted circuit {c.ground_truth['edge_roc_auc']:.3f}")
    for path in result.files:
        print(f"wrote {path}")
    print(f"verify: {result.verification.message()}")
    return EXIT_OK if result.verification.ok else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mechwork",
        description="A mechanistic-interpretability workbench.",
        epilog="example: mechwork zoo list",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="zoo:induction: patching heatmaps, then ACDC circuit -> HTML report -> verify",
                          epilog="example: mechwork demo --out demo_out")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.set_defaults(func=_demo)
    zoo_parser = sub.add_parser("zoo", help="models with planted mechanisms", epilog="example: mechwork zoo list")
    zoo_sub = zoo_parser.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)
    zoo_sub.add_parser("list", help="every zoo model, its task and its kind of ground truth",
                       epilog="example: mechwork zoo list").set_defaults(func=_zoo_list)
    build = zoo_sub.add_parser("build", help="build (and cache) zoo models now",
                               epilog="example: mechwork zoo build pairs trojan")
    build.add_argument("names", nargs="*", help="zoo model names (default: all)")
    build.set_defaults(func=_zoo_build)
    from . import _architectures, _challenge, _discover, _outputs, _tracr

    _tracr.add_commands(zoo_sub)

    _outputs.add_commands(sub)
    _challenge.add_commands(sub)
    _discover.add_commands(sub)
    _discover.add_bench(sub)
    _architectures.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..discovery import CircuitFileError, UnknownMethodError
    from ..executors import UnitFailed
    from ..experiments import StepFailed
    from ..hooks import InputError, UnknownHookError
    from ..models import ModelNotAvailableError
    from ..models.zoo import UnknownZooModelError
    from ..viz import StaticExportUnavailable

    try:
        return args.func(args)
    except (InputError, UnknownHookError, UnknownZooModelError, ModelNotAvailableError, CircuitFileError,
            UnknownMethodError, ValueError, TypeError) as exc:
        print(f"mechwork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StepFailed, StaticExportUnavailable, UnitFailed, ImportError) as exc:
        print(f"mechwork: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("mechwork: interrupted (finished results are kept; rerun the command to resume)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
