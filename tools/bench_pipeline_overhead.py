"""Benchmark: the ``cleanup`` pipeline on an exported transformer encoder, against onnxscript's optimizer.

Exports a 6-layer BERT-like encoder (hidden 384, 6 heads, FFN 1536, sequence 128,
post-LayerNorm, GELU; random weights, seeded) with
``torch.onnx.export(dynamo=True, opset_version=18, external_data=False)``, then:

* runs ``cleanup`` through the Python API with the ``Timing`` instrumentation:
  time per pass (total, runs, runs that changed the model) and the time the
  pipeline spends outside the passes (its overhead);
* runs ``onnxscript.optimizer.optimize`` (the peer tool) on the same model;
* compares node counts, and the outputs of the original, the cleaned and the
  optimized model in onnxruntime (graph optimizations off, so each graph runs as is).

Each variant is timed ``--repeat`` times on a fresh copy, the variants interleaved;
the tables give the fastest and the median. By default the export is the raw one
(``optimize=False``, what the exporter produces before its own onnxscript pass);
``--export-optimize`` benchmarks the exporter's default (already optimized) output too.

Usage::

    python tools/bench_pipeline_overhead.py [--repeat 5] [--arch bert|torch] [--export-optimize]
                                            [--out tools/results/bench_pipeline_overhead.json]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

os.environ.setdefault("ONNXQ_NO_PLUGINS", "1")  # measure onnxq itself, not installed plugins


# --- the model ----------------------------------------------------------------------------------------
def build_torch_model(arch: str, hidden: int, heads: int, layers: int, seed: int):  # -> torch.nn.Module
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        """BERT encoder layer: self-attention + FFN, each with a residual and post-LayerNorm."""

        def __init__(self) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden)
            self.ff1 = nn.Linear(hidden, 4 * hidden)
            self.ff2 = nn.Linear(4 * hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden)
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, d = x.shape
            dh = d // self.heads
            q, k, v = self.qkv(x).split(d, dim=-1)
            q, k, v = (t.reshape(b, s, self.heads, dh).transpose(1, 2) for t in (q, k, v))
            att = torch.softmax((q @ k.transpose(-2, -1)) * (dh**-0.5), dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, d)
            x = self.ln1(x + self.proj(ctx))
            return self.ln2(x + self.ff2(self.act(self.ff1(x))))

    if arch == "bert":
        model = nn.Sequential(*[Block() for _ in range(layers)])
    else:
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, activation="gelu",
                                           batch_first=True)
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return model.eval()


def export(path: Path, args: argparse.Namespace, optimize: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """Exports the encoder to ``path``; returns export seconds, the sample input and torch's output."""
    import torch

    model = build_torch_model(args.arch, args.hidden, args.heads, args.layers, args.seed)
    x = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((1, args.seq, args.hidden)).astype(np.float32))
    with torch.no_grad():
        expected = model(x).numpy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, external_data=False,
                          optimize=optimize, input_names=["x"], output_names=["y"], verbose=False)
    return time.perf_counter() - start, x.numpy(), expected


# --- measuring --------------------------------------------------------------------------------------------
def node_count(model) -> int:  # model: ir.Model
    import onnx_ir as ir

    graphs = [model.graph, *model.functions.values()]
    return sum(1 for g in graphs for _ in ir.traversal.RecursiveGraphIterator(g))


def op_histogram(model) -> dict[str, int]:
    import onnx_ir as ir

    ops: collections.Counter[str] = collections.Counter()
    for g in [model.graph, *model.functions.values()]:
        for node in ir.traversal.RecursiveGraphIterator(g):
            ops[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
    return dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def timed(repeat: int, variants: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]) -> dict[str, Any]:
    """Runs each ``body(setup())`` ``repeat`` times, interleaved so that a change of machine load
    hits every variant alike; only ``body`` is timed. Returns {name: (times, last result)}."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, (setup, body) in variants.items():
            arg = setup()
            start = time.perf_counter()
            results[name] = body(arg)
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], results[name]) for name in variants}


def ort_outputs(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def bench_variant(label: str, path: Path, x: np.ndarray, expected: np.ndarray, repeat: int) -> dict[str, Any]:
    import onnx
    import onnx_ir as ir
    import onnxscript.optimizer

    from onnxq import PassContext, PassRegistry, apply
    from onnxq.framework.instrumentation import Timing

    proto = onnx.load(path)
    registry = PassRegistry.default()
    original = ir.serde.deserialize_model(proto)

    # onnxq: cleanup on an ir.Model (the pipeline alone), with Timing.
    timings: list[Timing] = []

    def run_cleanup(model: ir.Model, record: bool = True) -> ir.Model:
        timing = Timing()
        if record:
            timings.append(timing)
        apply(model, registry.parse("cleanup"), PassContext(instrumentations=[timing]))
        return model

    fresh = lambda: ir.serde.deserialize_model(proto)  # noqa: E731
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = timed(repeat, {
                "onnxq_ir": (fresh, run_cleanup),
                # From a ModelProto to a ModelProto (conversions included), comparable to optimize(proto).
                "onnxq_proto": (lambda: proto,
                                lambda p: ir.serde.serialize_model(run_cleanup(ir.serde.deserialize_model(p), False))),
                # onnxscript: optimize(ModelProto) as users call it, and optimize(ir.Model).
                "peer_proto": (lambda: proto, onnxscript.optimizer.optimize),
                "peer_ir": (fresh, onnxscript.optimizer.optimize),
            })
    finally:
        quiet.setLevel(level)
    onnxq_ir_times, cleaned = runs["onnxq_ir"]
    onnxq_proto_times, _ = runs["onnxq_proto"]
    peer_proto_times, peer_proto = runs["peer_proto"]
    peer_ir_times, _ = runs["peer_ir"]
    peer = ir.serde.deserialize_model(peer_proto)

    # Per pass, from the fastest cleanup run on an ir.Model.
    fastest = min(range(repeat), key=lambda i: onnxq_ir_times[i])
    per_pass = timings[fastest].summary()
    pass_total = sum(r["seconds"] for r in per_pass.values())
    apply_s = onnxq_ir_times[fastest]

    y_orig = ort_outputs(proto.SerializeToString(), x)
    y_clean = ort_outputs(ir.serde.serialize_model(cleaned).SerializeToString(), x)
    y_peer = ort_outputs(peer_proto.SerializeToString(), x)

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))

    stats = lambda ts: {"min_s": min(ts), "median_s": statistics.median(ts), "all_s": ts}  # noqa: E731
    return {
        "label": label,
        "model_bytes": path.stat().st_size,
        "nodes": {"original": node_count(original), "onnxq_cleanup": node_count(cleaned),
                  "onnxscript_optimize": node_count(peer)},
        "functions": {"original": len(original.functions), "onnxq_cleanup": len(cleaned.functions),
                      "onnxscript_optimize": len(peer.functions)},
        "initializers": {"original": len(original.graph.initializers),
                         "onnxq_cleanup": len(cleaned.graph.initializers),
                         "onnxscript_optimize": len(peer.graph.initializers)},
        "ops": {"original": op_histogram(original), "onnxq_cleanup": op_histogram(cleaned),
                "onnxscript_optimize": op_histogram(peer)},
        "time": {
            "onnxq_cleanup_ir": stats(onnxq_ir_times),
            "onnxq_cleanup_proto": stats(onnxq_proto_times),
            "onnxscript_optimize_proto": stats(peer_proto_times),
            "onnxscript_optimize_ir": stats(peer_ir_times),
        },
        "per_pass": per_pass,
        "pipeline": {"apply_s": apply_s, "passes_s": pass_total, "overhead_s": apply_s - pass_total,
                     "leaf_pass_runs": len(timings[fastest].records)},
        "numerics": {
            "max_abs_diff_cleanup_vs_original": diff(y_clean, y_orig),
            "max_abs_diff_onnxscript_vs_original": diff(y_peer, y_orig),
            "max_abs_diff_original_vs_torch": diff(y_orig, expected),
            "output_max_abs": float(np.max(np.abs(y_orig))),
        },
    }


def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    warning = benchlib.busy_warning()
    if warning:
        print(f"\n{warning}")
    for v in results["variants"]:
        print(f"\n### cleanup vs onnxscript.optimizer.optimize: {v['label']}\n")
        print(f"{cfg['layers']}-layer {cfg['arch']} encoder, hidden {cfg['hidden']}, {cfg['heads']} heads, "
              f"seq {cfg['seq']}, opset 18, {v['model_bytes'] / 1e6:.1f} MB; "
              f"times: fastest (median) of {cfg['repeat']} runs\n")
        t, n = v["time"], v["nodes"]
        ref = t["onnxscript_optimize_proto"]["min_s"]
        rows = [
            ["onnxq cleanup (ir.Model -> ir.Model)", t["onnxq_cleanup_ir"], n["onnxq_cleanup"]],
            ["onnxq cleanup (ModelProto -> ModelProto)", t["onnxq_cleanup_proto"], n["onnxq_cleanup"]],
            ["onnxscript optimize (ModelProto)", t["onnxscript_optimize_proto"], n["onnxscript_optimize"]],
            ["onnxscript optimize (ir.Model)", t["onnxscript_optimize_ir"], n["onnxscript_optimize"]],
        ]
        print(benchlib.markdown_table(
            ["tool", "time ms", "median ms", "vs optimize(proto)", "nodes before", "nodes after"],
            [[name, round(s["min_s"] * 1000, 1), round(s["median_s"] * 1000, 1), round(s["min_s"] / ref, 2),
              n["original"], nodes] for name, s, nodes in rows]))
        print("\n#### time per pass (fastest cleanup run)\n")
        total = v["pipeline"]["apply_s"]
        rows = [[name, round(r["seconds"] * 1000, 2), round(100 * r["seconds"] / total, 1), int(r["runs"]),
                 int(r["changed"])] for name, r in v["per_pass"].items()]
        rows.append(["(pipeline outside the passes)", round(v["pipeline"]["overhead_s"] * 1000, 2),
                     round(100 * v["pipeline"]["overhead_s"] / total, 1), None, None])
        rows.append(["total (apply)", round(total * 1000, 2), 100.0, v["pipeline"]["leaf_pass_runs"], None])
        print(benchlib.markdown_table(["pass", "ms", "% of total", "runs", "changed"], rows))
        nm = v["numerics"]
        print("\n#### outputs (onnxruntime, graph optimizations off)\n")
        print(benchlib.markdown_table(["comparison", "max abs diff"], [
            ["onnxq cleanup vs original", nm["max_abs_diff_cleanup_vs_original"]],
            ["onnxscript optimize vs original", nm["max_abs_diff_onnxscript_vs_original"]],
            ["original (ORT) vs torch eager", nm["max_abs_diff_original_vs_torch"]],
        ]))
        ops = v["ops"]
        names = sorted(set().union(*[set(o) for o in ops.values()]), key=lambda k: -ops["original"].get(k, 0))
        print("\n#### ops\n")
        print(benchlib.markdown_table(
            ["op", "original", "onnxq cleanup", "onnxscript optimize"],
            [[k, ops["original"].get(k, 0), ops["onnxq_cleanup"].get(k, 0), ops["onnxscript_optimize"].get(k, 0)]
             for k in names]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("bert", "torch"), default="bert",
                   help="hand-written BERT layer, or torch.nn.TransformerEncoder (batch_first)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--export-optimize", action="store_true",
                   help="also benchmark the exporter's default output (optimize=True)")
    p.add_argument("--workdir", type=Path, help="where the exported models go (default: a temp folder)")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_pipeline_overhead.json",
                   help="JSON result file")
    args = p.parse_args(argv)

    results: dict[str, Any] = {
        "benchmark": "pipeline_overhead",
        "environment": benchlib.environment(),
        "config": {k: getattr(args, k) for k in ("arch", "layers", "hidden", "heads", "seq", "seed", "repeat")},
        "variants": [],
    }
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        variants = [(False, "raw export (optimize=False)")]
        if args.export_optimize:
            variants.append((True, "exporter default (optimize=True)"))
        for optimize, label in variants:
            path = work / f"encoder-{'opt' if optimize else 'raw'}.onnx"
            print(f"exporting {label} ...", flush=True)
            export_s, x, expected = export(path, args, optimize)
            print(f"  exported in {export_s:.1f} s; benchmarking ...", flush=True)
            row = bench_variant(label, path, x, expected, args.repeat)
            row["export_s"] = export_s
            results["variants"].append(row)
    report(results)
    benchlib.write_json(args.out, results)
    worst = max(max(v["numerics"]["max_abs_diff_cleanup_vs_original"] for v in results["variants"]), 0.0)
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
