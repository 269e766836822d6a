"""``mechwork cache``, ``mechwork patch``, ``mechwork report`` and ``mechwork run``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._discover import task_from_arguments
from ._main import EXIT_OK


def run_cache(args: argparse.Namespace) -> int:
    from ..hooks import stream_activations

    _, model, data = task_from_arguments(args)
    tokens = data.corrupted if args.corrupted else data.clean
    out = stream_activations(model, tokens, args.hooks, args.out, batch_size=args.batch_size, progress=True)
    print(f"cached {len(args.hooks)} hook pattern(s) for {len(tokens)} prompts into {out} (resumable)")
    return EXIT_OK


def run_patch(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json
    from ..discovery import make_metric
    from ..hooks import activation_patching, attribution_patching
    from ..viz import patching_heatmap, save_figure

    _, model, data = task_from_arguments(args)
    sweep = attribution_patching if args.method == "attribution" else activation_patching
    result = sweep(model, data.clean, data.corrupted, make_metric(args.metric, model, data), args.site,
                   per_position=args.per_position, direction=args.direction).normalized()
    out = Path(args.out)
    atomic_write_json(out / "result.json", result.to_dict())
    save_figure(patching_heatmap(result), out / "heatmap.html")
    for coords, value in result.top(5):
        print("  " + " ".join(f"{k} {v}" for k, v in coords.items()) + f": {value:+.3f}")
    print(f"wrote {out}/result.json and {out}/heatmap.html (normalised: 1 = restores the clean answer)")
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    from ..discovery import Circuit
    from ..reports import report_tokenizer, write_report

    circuit = Circuit.load(args.circuit)
    tokenizer = None if args.no_model else report_tokenizer(circuit)
    path = write_report(circuit, args.out, tokenizer=tokenizer, title=args.title)
    print(f"wrote {path} (self-contained; opens offline)")
    return EXIT_OK


def run_circuits(args: argparse.Namespace) -> int:
    from ..reports import build_shared_circuits

    for path in build_shared_circuits(args.out):
        print(f"wrote {path}")
    return EXIT_OK


def run_run(args: argparse.Namespace) -> int:
    from ..experiments import run_experiment
    from ._executor_args import executor_from_arguments

    executor = executor_from_arguments(args)
    try:
        result = run_experiment(args.experiment, args.out, force=args.force, progress=not args.quiet,
                                executor=executor)
    finally:
        if executor is not None:
            executor.close()
    for name in result.skipped:
        print(f"{name}: already done (resumed)")
    for name in result.ran:
        print(f"{name}: " + ", ".join(result.files[name]))
    print(f"results in {result.out} (configuration and versions in {result.out}/run.json)")
    return EXIT_OK


def add_commands(sub) -> None:
    from ..discovery import METRICS
    from ._discover import add_task_arguments

    c = sub.add_parser("cache", help="cache activations of zoo task prompts to sharded safetensors (resumable)",
                       epilog="example: mechwork cache --model zoo:induction --hooks 'blocks.*.attn.hook_z' "
                              "--out acts/")
    add_task_arguments(c)
    c.add_argument("--hooks", nargs="+", required=True, help="hook names or glob patterns")
    c.add_argument("--out", required=True)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--corrupted", action="store_true", help="cache the corrupted prompts instead of the clean")
    c.set_defaults(func=run_cache)

    p = sub.add_parser("patch", help="activation or attribution patching sweep -> result JSON + heatmap",
                       epilog="example: mechwork patch --model zoo:induction --site z --out heads/")
    add_task_arguments(p)
    p.add_argument("--site", default="z", help="z, attn_out, mlp_out, resid_pre, ... (default z)")
    p.add_argument("--per-position", action="store_true")
    p.add_argument("--method", choices=("exact", "attribution"), default="exact")
    p.add_argument("--direction", choices=("denoise", "noise"), default="denoise")
    p.add_argument("--metric", default="logit_diff", choices=METRICS)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_patch)

    r = sub.add_parser("report", help="a circuit file -> one self-contained HTML report",
                       epilog="example: mechwork report circuits/induction-acdc.json -o report.html")
    r.add_argument("circuit")
    r.add_argument("-o", "--out", required=True)
    r.add_argument("--title", default=None)
    r.add_argument("--no-model", action="store_true", help="do not load the model (token ids instead of strings)")
    r.set_defaults(func=run_report)

    s = sub.add_parser("circuits", help="regenerate the shared zoo circuit reports (JSON + HTML + index)",
                       epilog="example: mechwork circuits --out circuits")
    s.add_argument("--out", default="circuits")
    s.set_defaults(func=run_circuits)

    e = sub.add_parser("run", help="run an experiment file (TOML); resumes an interrupted run",
                       epilog="example: mechwork run examples/induction_circuit.toml --out runs/induction")
    e.add_argument("experiment")
    e.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    e.add_argument("--force", action="store_true", help="rerun every step, even those already done")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    from ._executor_args import add_executor_arguments

    add_executor_arguments(e)
    e.set_defaults(func=run_run)
