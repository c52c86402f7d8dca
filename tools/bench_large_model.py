"""Benchmark: onnxq on a ~2.5 GB fp32 model with external data, against a plain onnx load/save.

Generates (streamed: one layer's weights in memory at a time) a stack of
MatMul+Add / Gemm layers with ReLU, hidden 4096, with a little junk for cleanup
to remove (Identity nodes, a foldable constant, a duplicate and a dead node),
saved as ``big.onnx`` + ``big.onnx.data``. Then measures, each in its own
subprocess, wall time and peak memory of:

* ``onnxq inspect big.onnx``
* ``onnxq run big.onnx -p cleanup -o out/out.onnx --external-data yes``
* ``onnx.load`` + ``onnx.save(..., save_as_external_data=True)`` (the reference)

Peak RSS is ru_maxrss (what ``/usr/bin/time -v`` reports); the peaks of RssAnon
(heap: weights copied into memory) and RssFile (pages of mapped files) are
sampled from /proc as well. Afterwards it checks that the cleaned model
computes the same outputs as the input in onnxruntime, that external data was
written next to the output only, and that the input folder is unchanged. When
the run's peak RSS is over the target (1 GiB) it runs each cleanup pass alone to
find the one that loads the weights (``--per-pass`` does that always).

Usage::

    python tools/bench_large_model.py [--size-gb 2.5] [--hidden 4096] [--workdir DIR] [--keep]
                                      [--per-pass] [--out tools/results/bench_large_model.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

TARGET_RSS_MIB = 1024.0
CLEANUP_PASSES = (
    "infer-shapes",
    "fold-constants",
    "remove-identity",
    "eliminate-common-subexpressions",
    "eliminate-dead-code",
    "topological-sort",
)


# --- model generation ----------------------------------------------------------------------------
def layer_count(size_gb: float, hidden: int) -> int:
    per_layer = (hidden * hidden + hidden) * 4
    return max(1, math.ceil(size_gb * 1e9 / per_layer))


def build_model(hidden: int, layers: int, seed: int):  # -> ir.Model
    """The model, with every weight an ``ir.LazyTensor``: generated only while it is written."""
    import onnx_ir as ir

    FLOAT = ir.DataType.FLOAT
    scale = np.float32(math.sqrt(2.0 / hidden))  # He init keeps activations O(1) through ReLUs

    def weight(i: int) -> ir.TensorProtocol:
        rng = np.random.default_rng([seed, i, 0])
        w = rng.standard_normal((hidden, hidden), dtype=np.float32)
        w *= scale
        return ir.tensor(w, name=f"w{i}")

    def bias(i: int) -> ir.TensorProtocol:
        rng = np.random.default_rng([seed, i, 1])
        return ir.tensor((rng.standard_normal(hidden, dtype=np.float32) * np.float32(0.01)), name=f"b{i}")

    def lazy(name: str, shape: list[int], make) -> ir.Value:
        tensor = ir.LazyTensor(make, dtype=FLOAT, shape=ir.Shape(shape), name=name)
        return ir.val(name, FLOAT, shape, const_value=tensor)

    x = ir.val("x", FLOAT, [1, hidden])
    nodes: list[ir.Node] = []
    initializers: list[ir.Value] = []

    def add(op: str, inputs, attributes=None, name: str | None = None) -> ir.Value:
        node = ir.node(op, inputs, attributes, name=name or f"{op.lower()}_{len(nodes)}")
        nodes.append(node)
        return node.outputs[0]

    # Junk for the cleanup pipeline: a constant to fold (0.5 + 0.5), a dead node.
    half = add("Constant", [], {"value": ir.tensor(np.array(0.5, dtype=np.float32))}, name="half")
    one = add("Add", [half, half], name="one")
    add("Neg", [x], name="dead_neg")
    h = add("Mul", [x, one], name="scale_input")
    for i in range(layers):
        w = lazy(f"w{i}", [hidden, hidden], lambda i=i: weight(i))
        b = lazy(f"b{i}", [hidden], lambda i=i: bias(i))
        initializers += [w, b]
        if i % 2 == 0:
            h = add("MatMul", [h, w], name=f"layer{i}_matmul")
            h = add("Add", [h, b], name=f"layer{i}_bias")
        else:
            # Gemm computes h @ w.T + b; with random weights either layout is as good.
            h = add("Gemm", [h, w, b], {"transB": 1}, name=f"layer{i}_gemm")
        h = add("Identity", [h], name=f"layer{i}_identity")
        if i < layers - 1:
            h = add("Relu", [h], name=f"layer{i}_relu")
    # A duplicate pair for CSE: y = Tanh(h) + Tanh(h) - Tanh(h) == Tanh(h) exactly.
    t1 = add("Tanh", [h], name="tanh_a")
    t2 = add("Tanh", [h], name="tanh_b")
    s = add("Add", [t1, t2], name="tanh_sum")
    y = add("Sub", [s, t1], name="y")
    y.name = "y"
    graph = ir.Graph([x], [y], nodes=nodes, initializers=initializers, opset_imports={"": 18}, name="big")
    return ir.Model(graph, ir_version=10, producer_name="onnxq-bench")


def generate(path: Path, hidden: int, layers: int, seed: int) -> None:
    """Writes the model and its external data; peak memory stays about one layer's weights."""
    import onnx_ir as ir

    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(hidden, layers, seed)
    ir.save(model, path, external_data=path.name + ".data")


# --- the measured commands --------------------------------------------------------------------------
ONNX_ROUND_TRIP = """
import sys, onnx
src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
          location=dst.rsplit("/", 1)[-1] + ".data")
"""

ORT_RUN = """
import json, sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.log_severity_level = 3
feeds = dict(np.load(sys.argv[2]))
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
out = sess.run(None, feeds)
np.save(sys.argv[3], out[0])
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ONNXQ_NO_PLUGINS", "1")  # measure onnxq itself, not whatever plugins are installed
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="onnxq-bench-large-"))
    work.mkdir(parents=True, exist_ok=True)
    in_dir, out_dir, ref_dir, per_pass_dir = work / "in", work / "out", work / "ref", work / "per-pass"
    for d in (out_dir, ref_dir, per_pass_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    big = in_dir / "big.onnx"
    layers = args.layers or layer_count(args.size_gb, args.hidden)
    need_gib = 3 * layers * (args.hidden * args.hidden + args.hidden) * 4 / 1024**3 + 1
    if benchlib.free_disk_gib(work) < need_gib and not big.exists():
        sys.exit(f"{work}: need about {need_gib:.1f} GiB free disk (input, output and reference copies)")
    env = _env()
    results: dict[str, Any] = {"benchmark": "large_model", "environment": benchlib.environment()}
    measurements: list[benchlib.Measurement] = []
    try:
        # 1. Generate (in a subprocess, so its peak memory is measured like the others).
        if big.exists() and args.reuse:
            print(f"reusing {big}")
            gen = None
        else:
            shutil.rmtree(in_dir, ignore_errors=True)
            print(f"generating {big}: hidden {args.hidden}, {layers} layers ...", flush=True)
            gen = benchlib.measure(
                "generate (onnx_ir, streamed)",
                [sys.executable, __file__, "--generate-only", str(big), "--hidden", str(args.hidden),
                 "--layers", str(layers), "--seed", str(args.seed)],
                env=env,
            )
            _check(gen)
        data_bytes = (in_dir / "big.onnx.data").stat().st_size
        results["model"] = {
            "hidden": args.hidden, "layers": layers, "input": [1, args.hidden],
            "onnx_bytes": big.stat().st_size, "external_data_bytes": data_bytes,
            "external_data_gib": round(data_bytes / 1024**3, 3),
        }
        print(f"model: {data_bytes / 1e9:.2f} GB of weights ({data_bytes / 1024**3:.2f} GiB) in {layers} layers")
        before_input = benchlib.folder_listing(in_dir)
        # NOTE: flush the freshly written weights first, or their writeback slows the first command;
        # the file stays in the page cache, so every command below reads it warm.
        os.sync()
        benchlib.measure("warm-up", [sys.executable, "-c", "import onnxq.cli.run, onnx"], env=env)

        # 2. The three measured commands (each --repeat times: fastest wall time, highest peak RSS).
        baseline = _repeat(args.repeat, "python -c 'import onnxq.cli.run' (startup only)",
                           [sys.executable, "-c", "import onnxq.cli.run"], env)
        inspect = _repeat(args.repeat, "onnxq inspect", benchlib.onnxq_command("inspect", str(big)), env)
        out = out_dir / "out.onnx"
        run = _repeat(
            args.repeat, "onnxq run -p cleanup",
            benchlib.onnxq_command("run", str(big), "-p", "cleanup", "-o", str(out), "--external-data", "yes",
                                   "--json"),
            env,
        )
        ref = ref_dir / "ref.onnx"
        onnx_rt = _repeat(args.repeat, "onnx.load + onnx.save (external data)",
                          [sys.executable, "-c", ONNX_ROUND_TRIP, str(big), str(ref)], env)
        measurements = [m for m in (gen, baseline, inspect, run, onnx_rt) if m is not None]
        run_report = json.loads(run.stdout)
        results["run_report"] = {k: run_report[k] for k in ("pipeline", "modified", "stats", "timing")}

        # 3. Files: external data next to the output only, input folder untouched.
        out_files = sorted(p.name for p in out_dir.iterdir())
        after_input = benchlib.folder_listing(in_dir)
        locations = _external_locations(out)
        files = {
            "output_folder": out_files,
            "output_expected": out_files == ["out.onnx", "out.onnx.data"],
            "output_external_locations": sorted(locations),
            "output_references_only_its_data": locations == {"out.onnx.data"},
            "input_folder_unchanged": before_input == after_input,
            "input_folder": sorted(after_input),
        }
        results["files"] = files

        # 4. Numbers: same outputs in onnxruntime (each model in its own process; each loads 2.5 GB).
        results["correctness"] = check_outputs(work, big, out, ref, args.hidden, args.seed, env)

        # 5. Which pass loads the weights?
        per_pass: list[benchlib.Measurement] = []
        if args.per_pass or run.max_rss_mib > TARGET_RSS_MIB:
            if not args.per_pass:
                print(f"\npeak RSS of the run {run.max_rss_mib:.0f} MiB > {TARGET_RSS_MIB:.0f} MiB: "
                      "running each cleanup pass alone", flush=True)
            for name in CLEANUP_PASSES:
                dst = per_pass_dir / f"{name}.onnx"
                m = benchlib.measure(
                    f"onnxq run -p {name}",
                    benchlib.onnxq_command("run", str(big), "-p", name, "-o", str(dst), "--external-data", "yes",
                                           "--json"),
                    env=env,
                )
                _check(m)
                per_pass.append(m)
                for f in per_pass_dir.iterdir():
                    f.unlink()
        results["per_pass"] = [m.as_dict() for m in per_pass]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    results["measurements"] = [m.as_dict() for m in measurements]
    results["targets"] = {
        "run_peak_rss_mib": run.max_rss_mib,
        "run_wall_s": run.wall_s,
        "run_peak_rss_below_1GiB": run.max_rss_mib < TARGET_RSS_MIB,
    }
    report(results, measurements, onnx_rt, per_pass)
    return results


def check_outputs(work: Path, big: Path, out: Path, ref: Path, hidden: int, seed: int, env) -> dict[str, Any]:
    feeds = work / "feeds.npz"
    x = np.random.default_rng(seed + 1).standard_normal((1, hidden)).astype(np.float32)
    np.savez(feeds, x=x)
    outputs = {}
    for label, model in (("input", big), ("onnxq", out), ("onnx_round_trip", ref)):
        dst = work / f"y_{label}.npy"
        m = benchlib.measure(f"onnxruntime {label}", [sys.executable, "-c", ORT_RUN, str(model), str(feeds), str(dst)],
                             env=env)
        _check(m)
        outputs[label] = np.load(dst)
        dst.unlink()
    want = outputs["input"]
    diff = float(np.max(np.abs(outputs["onnxq"].astype(np.float64) - want)))
    diff_ref = float(np.max(np.abs(outputs["onnx_round_trip"].astype(np.float64) - want)))
    scale = float(np.max(np.abs(want)))
    return {
        "output_shape": list(want.shape),
        "output_max_abs": scale,
        "finite": bool(np.all(np.isfinite(want))),
        "max_abs_diff_onnxq_vs_input": diff,
        "max_abs_diff_onnx_round_trip_vs_input": diff_ref,
        "equal": bool(np.all(np.isfinite(want)) and diff <= 1e-5 * max(1.0, scale)),
    }


def _external_locations(path: Path) -> set[str]:
    import onnx

    proto = onnx.load(path, load_external_data=False)
    locations = set()
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            locations.add({e.key: e.value for e in t.external_data}["location"])
    return locations


def _repeat(times: int, label: str, command: list[str], env: dict[str, str]) -> benchlib.Measurement:
    """The fastest of ``times`` runs, with the highest peak memory seen in any of them."""
    runs = []
    for _ in range(max(1, times)):
        m = benchlib.measure(label, command, env=env)
        _check(m)
        runs.append(m)
    best = min(runs, key=lambda m: m.wall_s)
    best.max_rss_mib = max(m.max_rss_mib for m in runs)
    best.peak_anon_mib = max((m.peak_anon_mib or 0.0) for m in runs) or None
    best.peak_file_mib = max((m.peak_file_mib or 0.0) for m in runs) or None
    return best


def _check(m: benchlib.Measurement) -> None:
    print(f"  {m.label}: {m.wall_s:.1f} s, peak RSS {m.max_rss_mib:,.0f} MiB", flush=True)
    if m.returncode != 0:
        sys.exit(f"{m.label} failed (exit {m.returncode}):\n{m.stderr[-4000:]}")


def report(results: dict[str, Any], measurements: list[benchlib.Measurement], reference: benchlib.Measurement,
           per_pass: list[benchlib.Measurement]) -> None:
    model = results["model"]
    warning = benchlib.busy_warning()
    if warning:
        print(f"\n{warning}")
    print(f"\n### onnxq on a {model['external_data_bytes'] / 1e9:.2f} GB model "
          f"({model['layers']} layers, hidden {model['hidden']}, fp32, external data)\n")
    rows = []
    for m in measurements:
        rows.append([
            m.label, m.wall_s, m.max_rss_mib, m.peak_anon_mib, m.peak_file_mib,
            round(m.wall_s / reference.wall_s, 2), round(m.max_rss_mib / reference.max_rss_mib, 3),
        ])
    print(benchlib.markdown_table(
        ["command", "wall s", "peak RSS MiB", "peak anon MiB", "peak file MiB", "wall / onnx", "RSS / onnx"], rows))
    print("\nonnxq run writes through a temporary folder and fsyncs the model and its data before renaming "
          "them into place;\nthe onnx round trip does not fsync. Weights are read from a warm page cache.")
    if per_pass:
        print("\n#### each cleanup pass alone (load + pass + save)\n")
        print(benchlib.markdown_table(
            ["pipeline", "wall s", "peak RSS MiB", "peak anon MiB", "peak file MiB"],
            [[m.label, m.wall_s, m.max_rss_mib, m.peak_anon_mib, m.peak_file_mib] for m in per_pass]))
    timing = results["run_report"]["timing"]
    passes_s = sum(row["seconds"] for row in timing.values())
    print(f"\n#### time per pass inside `onnxq run -p cleanup` (passes: {passes_s:.2f} s of the run's "
          f"{results['targets']['run_wall_s']:.1f} s; the rest is startup, loading and writing + fsync of the weights)\n")
    print(benchlib.markdown_table(
        ["pass", "total s", "runs", "changed"],
        [[name, round(row["seconds"], 3), int(row["runs"]), int(row["changed"])] for name, row in timing.items()]))
    c, f = results["correctness"], results["files"]
    print("\n#### checks\n")
    print(benchlib.markdown_table(["check", "result"], [
        ["cleanup changed the model", results["run_report"]["modified"]],
        ["outputs equal in onnxruntime", f"{'yes' if c['equal'] else 'NO'} (max abs diff {c['max_abs_diff_onnxq_vs_input']:.3g})"],
        ["output folder", ", ".join(f["output_folder"])],
        ["output references only its own .data", f["output_references_only_its_data"]],
        ["input folder unchanged", f["input_folder_unchanged"]],
        [f"peak RSS of onnxq run < {TARGET_RSS_MIB:.0f} MiB", results["targets"]["run_peak_rss_below_1GiB"]],
    ]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=2.5, help="weights to generate, in GB (1e9 bytes)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (weights are hidden x hidden)")
    p.add_argument("--layers", type=int, default=0, help="number of layers (default: from --size-gb)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="work folder (default: a new folder under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (models) at the end")
    p.add_argument("--reuse", action="store_true", help="reuse WORKDIR/in/big.onnx when it exists")
    p.add_argument("--per-pass", action="store_true", help="always measure each cleanup pass alone")
    p.add_argument("--repeat", type=int, default=1, help="runs of each measured command (fastest is reported)")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_large_model.json", help="JSON result file")
    p.add_argument("--generate-only", type=Path, metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generate_only:
        start = time.perf_counter()
        generate(args.generate_only, args.hidden, args.layers or layer_count(args.size_gb, args.hidden), args.seed)
        print(f"generated in {time.perf_counter() - start:.1f} s")
        return 0
    results = run_benchmark(args)
    benchlib.write_json(args.out, results)
    ok = results["correctness"]["equal"] and results["files"]["output_expected"] and \
        results["files"]["input_folder_unchanged"] and results["files"]["output_references_only_its_data"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
