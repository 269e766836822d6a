"""Peak memory of EAP, EAP-IG (5 steps) and circuit evaluation, as multiples of a plain forward+backward's peak.

    python benchmarks/memory.py [--quick] [--check] [--batch 8 --seq 128 --prompts 512] [--skip-llama]

Models: ``GPT2Config()`` with random weights (as ``benchmarks/discovery.py``) and a Llama-shaped random model
of about half a billion parameters with grouped-query attention (24 layers, d_model 1024, 16 query / 4
key-value heads, gated MLP 4864, vocabulary 32,000), each saved as a local checkpoint and booted through
``mechwork.load``. Prompts: ``--batch`` x ``--seq`` random tokens, logit difference at the last position,
corrupted ablation.

**What is measured.** Every figure comes from its own fresh subprocess (peak RSS only ever grows within a
process), which loads the model, builds the graph and the prompts, runs one tiny forward (1 x 8 tokens, so
lazy one-time set-up is not charged to the method), frees what it can (``gc``, ``malloc_trim``) and resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``). *Peak* = the process's peak RSS during the
measured call (``VmHWM``) minus its RSS at that moment (``VmRSS``): the memory the call itself added on top
of the loaded model. glibc's mmap threshold is pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed
tensors go back to the kernel at once rather than staying in the heap, where a later allocation would reuse
them unseen. On CUDA the same figure is ``torch.cuda.max_memory_allocated() - memory_allocated()``.

**Baseline.** A plain forward+backward on the same batch: the bridge's own forward with its per-head edge
hooks off, the same metric at the same position (unembedded there only, as the methods do), backward to the
input embeddings with parameters frozen (no parameter gradients: the methods compute none). It is the
strictest baseline: a training-style backward that also fills parameter gradients would be larger.

``--breakdown`` (and the full run) adds where EAP's peak goes on GPT-2's shape: the tensors autograd saves
for the backward (grouped by shape), the ablation-value buffer the deltas are written into, and the
peak of each stage.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from _common import (
    Report,
    Spread,
    Target,
    bench_arguments,
    gpt2_small_random,
    random_gpt2,
    random_llama,
    random_prompt_pair,
)

from mechwork.discovery import CircuitEvaluator, DiscoveryTask, discover
from mechwork.graph import Graph
from mechwork.hooks._attribution import frozen_parameters
from mechwork.hooks._runner import embed, hook_flags, run_from
from mechwork.metrics import metric_value

RATIO = Target("<=", 2, "x")
PROMPTS = Target("in", 0.9, hi=1.1)
MIB = 2**20
RESULT_TAG = "MEMORY-RESULT "
LLAMA = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 4,
         "intermediate_size": 4864, "max_position_embeddings": 512}
# Llama-3-8B's shape (issue 17's bf16 figure; CUDA only: 16 GB of weights), and a tiny stand-in in the same
# dtype that runs the same code on a CPU (``--llama-8b-standin``)
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 8192}
LLAMA_8B_STANDIN = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
                    "intermediate_size": 448, "vocab_size": 1000, "max_position_embeddings": 256}
LLAMA_QUICK = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
               "intermediate_size": 688, "max_position_embeddings": 512}


# ---- inside a measuring subprocess ---------------------------------------------------------------
def _proc_status(field: str) -> int:
    """A ``/proc/self/status`` size in bytes (``VmRSS``, ``VmHWM``)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024


class PeakMeter:
    """The memory one call adds at its peak: RSS on CPU, the caching allocator's count on CUDA."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._libc = None if cuda else ctypes.CDLL("libc.so.6")

    def reset(self) -> int:
        """Free what can be freed, restart the peak counter; returns the memory in use now."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        self._libc.malloc_trim(0)
        # writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0); if that fails there is
        # no per-call peak to report, so the error is raised rather than reading a stale peak
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _proc_status("VmHWM")

    def added(self, fn) -> tuple[int, float]:
        """(bytes ``fn()`` added at its peak over the memory in use before it, seconds)."""
        start_bytes = self.reset()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        return self.peak() - start_bytes, seconds


def load_model(name: str, quick: bool):
    if name in ("llama8b", "llama8b-standin"):
        big = name == "llama8b"
        return random_llama("llama3-8b-shape-bf16-random" if big else "llama-8b-standin-bf16-random",
                            dtype=torch.bfloat16, **(LLAMA_8B if big else LLAMA_8B_STANDIN))
    if name == "gpt2" and quick:  # the same small model as benchmarks/discovery.py --quick
        return random_gpt2("gpt2-2x128-random", n_layer=2, n_embd=128, n_head=4, vocab_size=1000)
    if name == "gpt2":
        return gpt2_small_random()
    if quick:
        return random_llama("llama-4x256-gqa-random", **LLAMA_QUICK)
    return random_llama("llama-24x1024-gqa-random", **LLAMA)


def shape_name(name: str, quick: bool) -> str:
    if name.startswith("llama8b"):  # never --quick: the stand-in is its small version
        return "Llama-3-8B stand-in (tiny), bf16" if name.endswith("standin") else "Llama-3-8B shape, bf16"
    if quick:
        return "small GPT-2 (--quick)" if name == "gpt2" else "small Llama (--quick)"
    return "GPT-2 small shape" if name == "gpt2" else "Llama shape"


def forward_backward(model, task: DiscoveryTask) -> None:
    """The baseline: plain forward (edge hooks off), the metric, backward to the input embeddings only."""
    with torch.no_grad():
        resid = embed(model, task.clean)
    with hook_flags(model, attn_result=False, split_qkv=False, mlp_in=False), frozen_parameters(model), \
            torch.enable_grad():
        x = resid.requires_grad_(True)
        metric_value(task.metric, run_from(model, x, 0, position=task.position)).backward()


def circuit_evaluation(model, graph: Graph, task: DiscoveryTask) -> None:
    """A circuit evaluator (which runs the full and the empty circuit) and one circuit of 5% of the edges."""
    mask = (torch.rand(graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.05).float()
    CircuitEvaluator(model, graph, task).value(mask)


MEASURES = {
    "forward+backward": lambda model, graph, task: forward_backward(model, task),
    "eap": lambda model, graph, task: discover(model, graph, task, "eap"),
    "eap-ig": lambda model, graph, task: discover(model, graph, task, "eap-ig", steps=5),
    "circuit": circuit_evaluation,
}


def measure(spec: dict) -> dict:
    """One measurement, in this (fresh) process: ``spec`` names the model, what to run and the prompts."""
    torch.manual_seed(0)
    model = load_model(spec["model"], spec["quick"])
    graph = Graph.from_model(model)
    clean, corrupted, metric = random_prompt_pair(model, spec["prompts"], spec["seq"])
    task = DiscoveryTask(clean, corrupted, metric, batch_size=spec["batch"])
    with torch.no_grad():  # one tiny forward: lazy set-up (thread pools, hook tables) is not the method's
        model(clean[:1, :8])
    meter = PeakMeter(torch.cuda.is_available())
    if spec["what"] == "eap-stages":
        return eap_stages(model, graph, task, meter)
    added, seconds = meter.added(lambda: MEASURES[spec["what"]](model, graph, task))
    parameters = sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())  # tied: once
    return {"added": added, "seconds": seconds, "parameters": parameters, "edges": graph.n_edges}


# ---- where EAP's peak goes ------------------------------------------------------------------------
def _shape_class(shape: tuple[int, ...], cfg) -> str:
    d_model = int(cfg.d_model)
    if len(shape) == 4 and shape[-1] == d_model:
        return "[batch, pos, heads, d_model]: per-head copies of the residual (q/k/v inputs, their norms)"
    if len(shape) == 4 and shape[-1] == shape[-2]:
        return "[batch, heads, pos, pos]: attention scores and patterns"
    if len(shape) == 4:
        return "[batch, pos, heads, d_head] or [batch, heads, pos, d_head]: q, k, v, z"
    if shape and shape[-1] == int(cfg.d_mlp):
        return "[batch, pos, d_mlp]: MLP hidden"
    if shape and shape[-1] == d_model:
        return "[batch, pos, d_model]: residual-sized"
    return "other (logits at the metric position, small tensors)"


class SavedForBackward:
    """Bytes autograd saves for the backward while active, per shape class (each storage counted once; the
    model's weights, which matmuls save too, are not counted: they are not new memory)."""

    def __init__(self, model):
        self.cfg, self.bytes = model.cfg, defaultdict(int)
        modules = [model, getattr(model, "original_model", model)]
        self.seen = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.bytes[_shape_class(tuple(tensor.shape), self.cfg)] += storage.nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def eap_stages(model, graph: Graph, task: DiscoveryTask, meter: PeakMeter) -> dict:
    """EAP's steps one at a time (the same functions ``discover(..., "eap")`` calls): each stage's peak
    over what was live before it, what it leaves live, and what autograd saves for the backward; the
    baseline forward+backward's saved tensors for comparison."""
    from mechwork.discovery._gradients import edge_attributions

    stages, kept = {}, {}
    saved_plain = SavedForBackward(model)
    with saved_plain.hooks():
        stages["plain forward+backward (baseline)"] = meter.added(lambda: forward_backward(model, task))[0]
    state = {}
    stages["ablation values: the corrupted forward"] = meter.added(
        lambda: state.__setitem__("ablated", task.ablated(model, graph)))[0]
    kept["ablation values, then the deltas in their place [batch, pos, sources, d_model]"] = _nbytes([state["ablated"]])
    saved_eap = SavedForBackward(model)

    def clean_forward_backward():
        with torch.no_grad():
            resid = embed(model, task.clean)
        with saved_eap.hooks():
            edge_attributions(model, graph, task, [resid], state["ablated"], reuse_ablated=True)

    stages["clean forward + backward, edge scores taken layer by layer in the backward"] = meter.added(
        clean_forward_backward)[0]
    return {"stages": stages, "kept": kept, "saved_plain": dict(saved_plain.bytes),
            "saved_eap": dict(saved_eap.bytes)}


# ---- the driver ------------------------------------------------------------------------------------
def run_measurement(spec: dict) -> dict:
    """``measure(spec)`` in a fresh subprocess; its result, or the subprocess's error raised here."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd=Path.cwd())
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def repeated(spec: dict, repeats: int) -> tuple[Spread, dict]:
    """Peak bytes added over ``repeats`` fresh processes, and the first run's other figures."""
    runs = [run_measurement(spec) for _ in range(repeats)]
    return Spread(tuple(r["added"] for r in runs)), runs[0]


def mib(spread: Spread) -> str:
    return spread.fmt(1 / MIB, 0, " MiB")


MEASURED = (("eap", "EAP"), ("eap-ig", "EAP-IG (5 steps)"), ("circuit", "circuit evaluation"))


def model_ratios(report: Report, args, name: str, repeats: int, measured=MEASURED) -> None:
    spec = {"model": name, "prompts": args.batch, "batch": args.batch, "seq": args.seq, "quick": args.quick}
    base, info = repeated({**spec, "what": "forward+backward"}, repeats)
    shape = shape_name(name, args.quick)
    print(f"-- {shape}: {info['parameters'] / 1e6:.0f} M parameters, {info['edges']} edges, {args.batch} x "
          f"{args.seq} tokens, {repeats} fresh process(es) per figure")
    report.result(f"plain forward+backward peak, {shape} (baseline)", base.median, mib(base),
                  detail=f"{info['seconds']:.1f} s")
    for what, label in measured:
        peak, run = repeated({**spec, "what": what}, repeats)
        ratio = peak.median / base.median
        report.result(f"{label} peak / forward+backward peak, {shape}", ratio, f"{ratio:.2f}x", RATIO,
                      detail=f"{label} {mib(peak)}, {run['seconds']:.1f} s")


def llama_8b_bf16(report: Report, args) -> None:
    """EAP-IG (5 steps) on a Llama-3-8B-shaped random model in bf16 at batch 8 x 128: its peak, the plain
    forward+backward's, and their ratio. Needs a CUDA GPU; the stand-in runs the same code on a CPU."""
    name = "llama8b-standin" if args.llama_8b_standin else "llama8b"
    if name == "llama8b" and not torch.cuda.is_available():
        print("-- Llama-3-8B shape, bf16: not run: it needs a CUDA GPU (16 GB of bf16 weights; no GPU here). "
              "`--llama-8b-standin` runs the same code on a tiny model")
        return
    model_ratios(report, args, name, 1, measured=MEASURED[1:2])


def prompt_counts(report: Report, args, repeats: int) -> None:
    spec = {"model": "gpt2", "batch": args.batch, "seq": args.prompts_seq, "quick": args.quick}
    print(f"-- {shape_name('gpt2', args.quick)}: {args.batch} vs {args.prompts} prompts, batch_size {args.batch}, "
          f"{args.prompts_seq} tokens (shorter prompts than above: {args.prompts // args.batch} micro-batches a run)")
    for what, label in (("eap", "EAP"), ("circuit", "circuit evaluation")):
        few, _ = repeated({**spec, "what": what, "prompts": args.batch}, repeats)
        many, run = repeated({**spec, "what": what, "prompts": args.prompts}, repeats)
        ratio = many.median / few.median
        report.result(f"{label} peak, {args.prompts} prompts / {args.batch} prompts", ratio, f"{ratio:.3f}",
                      PROMPTS, detail=f"{args.batch}: {mib(few)}, {args.prompts}: {mib(many)} "
                                      f"({run['seconds']:.0f} s)")


def breakdown(args) -> None:
    spec = {"model": "gpt2", "prompts": args.batch, "batch": args.batch, "seq": args.seq, "quick": args.quick,
            "what": "eap-stages"}
    result = run_measurement(spec)
    print(f"-- where EAP's peak goes, {shape_name('gpt2', args.quick)}, {args.batch} x {args.seq} tokens "
          "(one process, MiB)")
    for title, key in (("peak each stage adds over what was live before it", "stages"),
                       ("live after the stages (tensor sizes)", "kept"),
                       ("saved for the backward, plain forward+backward", "saved_plain"),
                       ("saved for the backward, EAP's clean forward", "saved_eap")):
        total = sum(result[key].values())
        print(f"   {title}: {total / MIB:.0f} MiB in all" if key != "stages" else f"   {title}:")
        for what, size in sorted(result[key].items(), key=lambda kv: -kv[1]):
            print(f"      {size / MIB:8.0f}  {what}")
    sys.stdout.flush()


def main() -> int:
    parser = bench_arguments("peak memory of EAP, EAP-IG and circuit evaluation")
    parser.set_defaults(seq=128, repeats=3)
    parser.add_argument("--prompts", type=int, default=512, help="the many-prompts run (batch_size --batch)")
    parser.add_argument("--prompts-seq", type=int, default=32, help="tokens per prompt in the many-prompts run")
    parser.add_argument("--prompt-repeats", type=int, default=1, help="fresh processes per many-prompts figure")
    parser.add_argument("--llama-repeats", type=int, default=1, help="fresh processes per Llama-shaped figure")
    parser.add_argument("--skip-llama", action="store_true", help="skip the Llama-shaped model")
    parser.add_argument("--skip-prompts", action="store_true", help="skip the --batch vs --prompts comparison")
    parser.add_argument("--breakdown", action="store_true", help="only where EAP's peak goes")
    parser.add_argument("--skip-llama-8b", action="store_true", help="skip the Llama-3-8B-shaped bf16 EAP-IG")
    parser.add_argument("--llama-8b-standin", action="store_true",
                        help="run the Llama-3-8B part on a tiny bf16 stand-in (a CPU check of the same code)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, in this process
    args = parser.parse_args()
    if args.measure:
        print(RESULT_TAG + json.dumps(measure(json.loads(args.measure))))
        return 0
    if args.quick:  # a 2-layer GPT-2 (d_model 128) and a 4-layer Llama (d_model 256) instead of the full shapes
        args.seq, args.prompts_seq, args.prompts, args.repeats, args.llama_repeats = 32, 16, 32, 1, 1
    if args.breakdown:
        breakdown(args)
        return 0
    report = Report("benchmarks/memory.py" + (" --quick" if args.quick else ""))
    report.header("peak = memory a call adds at its peak over the loaded model (peak RSS on CPU, each figure from "
                  "fresh processes; CUDA: max_memory_allocated), median (range, n processes)",
                  "baseline: plain forward+backward on the same batch (edge hooks off, parameters frozen, "
                  "backward to the input embeddings)")
    model_ratios(report, args, "gpt2", args.repeats)
    if not args.skip_llama:
        model_ratios(report, args, "llama", args.llama_repeats)
    if not args.skip_prompts:
        prompt_counts(report, args, args.prompt_repeats)
    if not args.skip_llama_8b:
        llama_8b_bf16(report, args)
    breakdown(args)
    return report.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
