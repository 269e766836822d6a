"""``mechwork zoo tracr`` (a RASP program -> a verified checkpoint) and ``mechwork zoo tracr-table`` (what
each discovery method reaches on each tracr zoo entry, with zero ablation, as a Markdown table)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._main import EXIT_OK

TABLE_COMMAND = "mechwork zoo tracr-table --out docs/tracr.md"


def add_commands(zoo_sub) -> None:
    tracr = zoo_sub.add_parser(
        "tracr", help="compile a RASP program (PROGRAM.py) with tracr into a verified Hugging Face checkpoint",
        epilog="example: mechwork zoo tracr mechwork/models/zoo/tracr_programs/frac_prevs.py --out frac_prevs")
    tracr.add_argument("program", help="PROGRAM.py defining program(), VOCAB, MAX_SEQ_LEN (and COMPILER_BOS)")
    tracr.add_argument("--out", required=True, help="checkpoint folder to write (must not exist)")
    tracr.add_argument("--n-check", type=int, default=1000,
                       help="random inputs on which the checkpoint must equal tracr's model (default: 1000)")
    tracr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tracr.set_defaults(func=_import)
    table = zoo_sub.add_parser(
        "tracr-table", help="edge ROC AUC of every discovery method on every tracr zoo entry (zero ablation)",
        epilog=f"example: {TABLE_COMMAND}")
    table.add_argument("--out", help="write the Markdown table here (default: print it)")
    table.add_argument("--methods", nargs="*", help="discovery methods (default: all registered)")
    table.add_argument("--n-prompts", type=int, default=32, help="task prompts per entry (default: 32)")
    table.set_defaults(func=_table)


def _import(args: argparse.Namespace) -> int:
    from ..models.zoo._tracr import import_program

    facts = import_program(args.program, args.out, n_check=args.n_check, overwrite=args.overwrite)
    print(f"wrote {args.out}: {facts['layers']} layers, {facts['heads']} heads, d_model {facts['d_model']}; equals "
          f"tracr's model on {facts['n_inputs']} random inputs ({facts['positions']} positions, largest readout "
          f"difference {facts['max_abs_readout_diff']:.2e}); ground truth in {Path(args.out) / 'tracr.json'}")
    return EXIT_OK


def tracr_table(methods: list[str] | None = None, n_prompts: int = 32, seed: int = 0) -> tuple[list[str], list[dict]]:
    """One row per tracr zoo entry: each method's edge ROC AUC against tracr's ground truth, zero ablation."""
    import mechwork

    from ..discovery import discover, ground_truth_scores, task_from_data
    from ..discovery import methods as registered
    from ..graph import Graph
    from ..models.zoo._tracr._zoo import PREFIX

    names = methods or [m.name for m in registered()]
    rows = []
    for entry in mechwork.zoo.entries():
        if not entry.name.startswith(PREFIX):
            continue
        model = mechwork.load(f"zoo:{entry.name}")
        data = entry.task.data(n_prompts, seed=seed)
        graph = Graph.from_model(model)
        task = task_from_data(model, data, ablation="zero")
        row = {"model": entry.name, "edges": len(graph.edges), "truth": len(entry.ground_truth().edges)}
        for method in names:
            start = time.perf_counter()
            try:
                scores = discover(model, graph, task, method)
            except ValueError as refused:  # a method that does not take zero ablation says so
                row[method] = f"n/a: {refused}"
                continue
            row[method] = (ground_truth_scores(scores, entry.ground_truth())["edge_roc_auc"],
                           time.perf_counter() - start)
        rows.append(row)
    return names, rows


def table_markdown(names: list[str], rows: list[dict], n_prompts: int) -> str:
    head = "| entry | edges | ground-truth edges | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (3 + len(names))]
    for row in rows:
        cells = [f"{row[m][0]:.3f}" if isinstance(row[m], tuple) else "n/a" for m in names]
        lines.append(f"| `{row['model']}` | {row['edges']} | {row['truth']} | " + " | ".join(cells) + " |")
    refusals = sorted({row[m] for row in rows for m in names if isinstance(row[m], str)})
    return "\n".join([
        f"Edge ROC AUC against the ground truth read off tracr's craft graph; zero ablation, logit-difference "
        f"metric, {n_prompts} prompts (seed 0) per entry. Made by `{TABLE_COMMAND}`.", "", *lines, "",
        *(f"- {r}" for r in refusals), ""])


def _table(args: argparse.Namespace) -> int:
    names, rows = tracr_table(args.methods, args.n_prompts)
    text = table_markdown(names, rows, args.n_prompts)
    if args.out:
        _replace_generated(Path(args.out), text)
        print(f"wrote {args.out}")
    print(text)
    return EXIT_OK


BEGIN, END = "<!-- tracr-table: begin (generated) -->", "<!-- tracr-table: end -->"


def _replace_generated(path: Path, table: str) -> None:
    """Put the table between the markers of an existing page (keeping its prose), or write a page of its own."""
    block = f"{BEGIN}\n{table}{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = (text + "\n" if text else "# tracr zoo entries\n\n") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
