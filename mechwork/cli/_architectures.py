"""``mechwork architectures``: which model families each capability works on, found by running it.

Every family in ``mechwork.models._families`` is built as a tiny random-weight checkpoint in a
temporary folder, loaded with ``mechwork.load``, and checked against references outside mechwork's
own code path: the plain Hugging Face model (logits), ``run_with_cache`` (caching), a brute-force loop
of plain TransformerLens hooks (resid_pre patching), the plain model's clean and corrupted runs (the
patch-mask engine with every edge kept / none kept). The result is a Markdown table; each column is
backed by a test in ``tests/integration/test_families.py``, named under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ._main import EXIT_OK

COLUMNS = (
    ("loads", "loads, logits = Hugging Face", "test_logits_equal_hugging_face, test_structure_matches_the_family"),
    ("caching", "caching", "test_caching_equals_run_with_cache"),
    ("patching", "activation patching", "test_resid_pre_patching_equals_brute_force"),
    ("graph", "edge graph + discovery", "test_edge_graph_is_exact_or_refused_by_name, "
     "test_every_method_runs_and_its_circuit_is_what_brute_force_computes"),
)
TEST_FILE = "tests/integration/test_families.py"


@dataclass(frozen=True)
class Cell:
    ok: bool
    note: str = ""

    def markdown(self) -> str:
        mark = "✅" if self.ok else "❌"
        return f"{mark} {_escape(self.note)}".strip()


@dataclass(frozen=True)
class Row:
    family: str
    architecture: str
    structure: str
    cells: dict[str, Cell]


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _failure(exc: BaseException) -> Cell:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Cell(False, f"{type(exc).__name__}: {first[:300]}")


def _checked(check: Callable[[], Cell]) -> Cell:
    try:
        return check()
    except Exception as exc:  # a family that breaks a capability is a row of the table, not a crash
        return _failure(exc)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or third-party warnings in the command's output (the table says what matters)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (2, 6), generator=g), torch.randint(0, 40, (2, 6), generator=g)


def _metric(clean):
    from ..metrics import LogitDiff

    return LogitDiff(position=-1, answers=clean[:, 1], wrong=clean[:, 2])


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def check_loads(model, folder: Path) -> Cell:
    from transformers import AutoModelForCausalLM

    clean, _ = _prompts()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        diff = _max_diff(model(clean), hf(clean).logits)
    return Cell(diff < 1e-4, "max logit difference < 1e-5" if diff < 1e-5 else f"max logit difference {diff:.0e}")


def check_caching(model) -> Cell:
    from ..hooks import cache_activations

    clean, _ = _prompts()
    with torch.no_grad():
        _, ours = cache_activations(model, clean, ["blocks.*.hook_resid_pre", "blocks.*.attn.hook_z"])
        _, theirs = model.run_with_cache(clean)
    diff = max(_max_diff(v, theirs[k]) for k, v in ours.items())
    return Cell(diff == 0.0 and len(ours) == 2 * model.cfg.n_layers,
                f"{len(ours)} hooks" + ("" if diff == 0.0 else f", differs from run_with_cache by {diff:.1e}"))


def brute_force_resid_pre(model, clean, corrupted, metric) -> torch.Tensor:
    """The independent reference for ``resid_pre`` patching, with plain TransformerLens hooks only: run
    the corrupted prompts with the clean resid_pre written in at one (layer, position) at a time."""
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        values = torch.zeros(model.cfg.n_layers, clean.shape[1])
        for layer in range(model.cfg.n_layers):
            for pos in range(clean.shape[1]):
                def write(act, hook, layer=layer, pos=pos):
                    act = act.clone()
                    act[:, pos] = cache[f"blocks.{layer}.hook_resid_pre"][:, pos]
                    return act

                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", write)])
                values[layer, pos] = float(metric(logits))
    return values


def check_patching(model) -> Cell:
    from ..hooks import activation_patching
    from ..models import SlowPathWarning, structure_of

    clean, corrupted = _prompts()
    metric = _metric(clean)
    with warnings.catch_warnings(record=True) as said, torch.no_grad():
        warnings.simplefilter("always", SlowPathWarning)
        ours = activation_patching(model, clean, corrupted, metric, "resid_pre", per_position=True).values
        reference = brute_force_resid_pre(model, clean, corrupted, metric)
    diff = _max_diff(ours, reference)
    slow = any(issubclass(w.category, SlowPathWarning) for w in said)
    if diff <= 1e-4:
        injected = "" if structure_of(model).start_at_layer_exact else (
            "; the bridge's start_at_layer ignores the residual here, so mechwork puts it at the block's input")
        return Cell(True, ("resumes through start_at_layer (SlowPathWarning)" if slow else "") + injected)
    why = "" if structure_of(model).start_at_layer_exact else (
        " (TransformerLens's start_at_layer does not resume at the block on this bridge)")
    return Cell(False, f"resid_pre patching differs from brute-force hook patching by {diff:.2f}{why}")


def check_graph(model) -> Cell:
    from ..discovery import DiscoveryTask, discover, methods
    from ..graph import Graph, ablation_values, run_circuit
    from ..models import UnsupportedModelError

    try:
        graph = Graph.from_model(model)
    except UnsupportedModelError as exc:
        return Cell(False, str(exc).split(": it has ", 1)[-1].split(". Caching")[0])
    clean, corrupted = _prompts()
    ablated = ablation_values(model, graph, "corrupted", clean, corrupted)
    with torch.no_grad():
        kept = _max_diff(run_circuit(model, graph, clean, graph.full_mask(1.0), ablated), model(clean))
        none = _max_diff(run_circuit(model, graph, clean, graph.full_mask(0.0), ablated), model(corrupted))
    if kept > 1e-4 or none > 1e-4:
        return Cell(False, f"{graph.n_edges} edges; all kept differs from the clean run by {kept:.1e}, "
                           f"none kept from the corrupted run by {none:.1e}")
    task = DiscoveryTask(clean, corrupted, _metric(clean))
    names = []
    for method in methods():
        options = {"steps": 20} if method.name == "learned-mask" else {}
        scores = discover(model, graph, task, method.name, **options).scores
        if scores.shape != (graph.n_edges,) or not bool(torch.isfinite(scores).all()):
            return Cell(False, f"{method.name} gave scores of shape {tuple(scores.shape)} or non-finite ones")
        names.append(method.name)
    return Cell(True, f"{graph.n_edges} edges ({'parallel' if graph.parallel else 'sequential'} blocks"
                      f"{_computed_routes(model)}); all kept = clean, none kept = corrupted; {len(names)} methods run")


def _computed_routes(model) -> str:
    """Which access points mechwork computes because the bridge lacks their hooks (models/_edge_access.py)."""
    from ..models import structure_of
    from ..models._edge_access import Access

    structure = structure_of(model)
    access = structure.edge_access
    computed = [what for what, route in (("head outputs from hook_z and W_O", access.head_outputs),
                                         ("head inputs through ln1 and W_Q/W_K/W_V", access.head_inputs),
                                         ("MLP input through the shared ln1", access.mlp_inputs))
                if route is Access.COMPUTED]
    normed = ("; head edges through the attention-output norm (tests/integration/test_post_norm.py)"
              if structure.attn_out_norm else "")
    return ("; computed by mechwork: " + ", ".join(computed) if computed else "") + normed


def _structure_summary(model) -> str:
    from ..models import structure_of

    s = structure_of(model)
    extra = ", attention-output norm" if s.attn_out_norm else ""
    return (f"{s.layout.value}, {s.norm.value}, {s.mlp.value} MLP, {s.positions.value}, "
            f"{s.n_heads} q / {s.n_kv_heads} kv heads{extra}")


def family_row(name: str, root: Path) -> Row:
    """Build, load and check one family (inside ``root``)."""
    from ..models import load
    from ..models._families import build_checkpoint, get_family

    family = get_family(name)
    try:
        folder = build_checkpoint(name, root / name)
        model = load(folder)
    except Exception as exc:
        failed = _failure(exc)
        return Row(name, family.architecture, "", {key: failed for key, _, _ in COLUMNS})
    cells = {
        "loads": _checked(lambda: check_loads(model, folder)),
        "caching": _checked(lambda: check_caching(model)),
        "patching": _checked(lambda: check_patching(model)),
        "graph": _checked(lambda: check_graph(model)),
    }
    return Row(name, family.architecture, _checked(lambda: Cell(True, _structure_summary(model))).note, cells)


def render(rows: list[Row]) -> str:
    from importlib.metadata import version

    header = ["family", "Hugging Face class", "structure (mechwork.models.structure_of)"] + [t for _, t, _ in COLUMNS]
    lines = [
        "# Architectures",
        "",
        "<!-- generated by `mechwork architectures --out docs/architectures.md`; do not edit by hand -->",
        "",
        f"Each row is a tiny random-weight checkpoint of the family (2 layers, d_model 32, 4 query heads, "
        f"vocabulary 40; `mechwork/models/_families.py`), built and checked by `mechwork architectures` with "
        f"transformers {version('transformers')}, transformer-lens {version('transformer-lens')}, "
        f"torch {version('torch').split('+')[0]}. ❌ says why.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row.family, f"`{row.architecture}`", _escape(row.structure)]
        lines.append("| " + " | ".join(cells + [row.cells[key].markdown() for key, _, _ in COLUMNS]) + " |")
    lines += ["", "What each column checks, and the test (parametrised over every family) that backs its ✅:", ""]
    explained = {
        "loads": "`mechwork.load(folder)` boots the bridge and its logits equal "
                 "`AutoModelForCausalLM.from_pretrained(folder)`'s; the structure column matches the family's config",
        "caching": "`cache_activations` of `blocks.*.hook_resid_pre` and `blocks.*.attn.hook_z` equals "
                   "`run_with_cache`",
        "patching": "`activation_patching(..., \"resid_pre\", per_position=True)` equals a brute-force loop of "
                    "plain TransformerLens hooks (`run_with_hooks`)",
        "graph": "`Graph.from_model` builds; the patch-mask engine with every edge kept gives the clean logits and "
                 "with none kept the corrupted ones; every registered discovery method runs (the tests also check "
                 "a random circuit and each method's top-quarter circuit against brute-force edge ablation with "
                 "plain hooks, `tests/edge_reference.py`), or the graph refuses the model naming what is missing",
    }
    for key, title, tests in COLUMNS:
        named = ", ".join(f"`{TEST_FILE}::{t}`" for t in tests.split(", "))
        lines.append(f"- **{title}**: {explained[key]}. {named}")
    return "\n".join(lines) + "\n"


def run_architectures(args: argparse.Namespace) -> int:
    from ..models._families import family_names

    names = args.family or list(family_names())
    unknown = sorted(set(names) - set(family_names()))
    if unknown:
        raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                         f"known: {', '.join(family_names())}")
    rows = []
    with _quiet(), tempfile.TemporaryDirectory(prefix="mechwork-architectures-") as tmp:
        for name in names:
            rows.append(family_row(name, Path(tmp)))
    table = render(rows)
    if args.out:
        from .._io import atomic_write_text

        out = atomic_write_text(args.out, table)
        print(f"wrote {out} ({len(rows)} families)")
    else:
        print(table, end="")
    return EXIT_OK


def add_commands(sub) -> None:
    parser = sub.add_parser(
        "architectures", help="build a tiny checkpoint of every model family and tabulate what works on it",
        epilog="example: mechwork architectures --out docs/architectures.md")
    parser.add_argument("--out", help="write the Markdown table here (default: print it)")
    parser.add_argument("--family", action="append", help="only this family (repeatable), e.g. --family llama")
    parser.set_defaults(func=run_architectures)
