"""Benchmark: onnxq ``optimize`` beside onnxslim and onnxscript's ``optimize``, in one run.

Models: every zoo model (``models/.cache``, built by ``python models/build.py``) plus raw
PyTorch exports (``onnxq.convert.from_torch(optimize=False)``: BatchNorm and decomposed
ops kept) of a few zoo architectures with seeded random weights. For each model and tool:

* node count (all graphs) before and after;
* onnxruntime CPU latency of the result with onnxruntime's own optimizations on
  (``ORT_ENABLE_ALL``, 1 thread), median of ``--runs`` (>= 30) runs interleaved across the
  input and the three outputs in an order that rotates every round, batch 1 (held-out
  samples for zoo models);
* max abs difference of every float output against the input model's;
* the tool's wall time from file to file (load, transform, save).

onnxslim is a benchmark-only dependency (``pip install onnxslim``), never one of onnxq's;
without it its columns read ``-``.

Usage::

    python tools/bench_optimize.py [--runs 30] [--only NAME ...] [--no-raw]
                                   [--out tools/results/bench_optimize.json]
"""

from __future__ import annotations

import argparse
import collections
import logging
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
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

TOOLS = ("onnxq", "onnxslim", "onnxscript")


# --- the tools, file to file -------------------------------------------------------------
def run_onnxq(src: Path, dst: Path) -> None:
    from onnxq.framework.context import PassContext
    from onnxq.framework.pipeline import apply
    from onnxq.ir.io import load_model, save_model
    from onnxq.passes.fusion import optimize_pipeline

    model = load_model(src)
    apply(model, optimize_pipeline(), PassContext())
    save_model(model, dst)


def run_onnxslim(src: Path, dst: Path) -> None:
    import onnxslim

    onnx.save(onnxslim.slim(onnx.load(src)), dst)


def run_onnxscript(src: Path, dst: Path) -> None:
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(src)), dst)


RUNNERS: dict[str, Callable[[Path, Path], None]] = {
    "onnxq": run_onnxq,
    "onnxslim": run_onnxslim,
    "onnxscript": run_onnxscript,
}


# --- models ------------------------------------------------------------------------------
def zoo_models(only: set[str] | None) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    from models import zoo

    found = []
    for name in sorted(zoo.load_manifest()):
        if only and name not in only:
            continue
        inputs, _ = zoo.load_eval(name)
        found.append((name, zoo.model_path(name), {k: v[:1] for k, v in inputs.items()}))
    return found


def raw_exports(workdir: Path, only: set[str] | None) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    """Raw (optimize=False) exports of zoo architectures, seeded random weights."""
    import torch

    from models import bert_like, mobilenetv2_digits, resnet_digits, transformer_digits
    from onnxq.convert import from_torch
    from onnxq.ir.io import save_model

    def bert_inputs() -> tuple[Any, ...]:
        batch = bert_like.token_batch(np.random.default_rng(0), 1)
        return torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])

    specs: list[tuple[str, Callable[[], Any], Callable[[], tuple[Any, ...]]]] = [
        ("raw:resnet_digits", resnet_digits.ResNetDigits, lambda: (torch.randn(1, 1, 8, 8),)),
        ("raw:mobilenetv2_digits", mobilenetv2_digits.MobileNetV2Digits,
         lambda: (torch.randn(1, 1, mobilenetv2_digits.SIZE, mobilenetv2_digits.SIZE),)),
        ("raw:transformer_digits", transformer_digits.RowTransformer, lambda: (torch.randn(1, 8, 8),)),
        ("raw:bert_like", bert_like.BertLike, bert_inputs),
    ]
    found = []
    for name, make, example in specs:
        if only and name not in only and name.removeprefix("raw:") not in only:
            continue
        torch.manual_seed(0)
        module = make().eval()
        for buffer_name, buffer in module.named_buffers():
            # NOTE: fresh BatchNorms have mean 0 / var 1 (identity); make the fold do real work.
            if buffer_name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        args = example()
        result = from_torch(module, args, optimize=False)
        path = workdir / f"{name.replace(':', '_')}.onnx"
        save_model(result.model, path)
        names = [v.name for v in result.model.graph.inputs if v.name not in result.model.graph.initializers]
        found.append((name, path, {n: a.numpy() for n, a in zip(names, args, strict=True)}))
    return found


# --- measuring ---------------------------------------------------------------------------
def node_count(path: Path) -> int:
    import onnx_ir as ir

    model = ir.load(path)
    return sum(1 for _ in model.graph.all_nodes()) + sum(len(f) for f in model.functions.values())


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(want: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        if a.dtype.kind == "f":
            if a.shape != b.shape:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
    return worst


def bench_model(name: str, src: Path, feeds: dict[str, np.ndarray], workdir: Path, runs: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "nodes_in": node_count(src)}
    paths = {"input": src}
    for tool in TOOLS:
        dst = workdir / f"{name.replace(':', '_')}.{tool}.onnx"
        start = time.perf_counter()
        try:
            RUNNERS[tool](src, dst)
        except Exception as e:  # noqa: BLE001  # a peer tool failing on a model is a result, not a crash
            row[f"{tool}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        row[f"{tool}_wall_s"] = time.perf_counter() - start
        row[f"{tool}_nodes"] = node_count(dst)
        paths[tool] = dst
    sessions = {}
    for key, path in paths.items():
        try:
            sessions[key] = session(path)
        except Exception as e:  # noqa: BLE001  # an output onnxruntime refuses is a result too
            row[f"{key}_error"] = f"onnxruntime: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if "input" not in sessions:
        return row
    reference = sessions["input"].run(None, feeds)
    for key, sess in list(sessions.items()):
        if key == "input":
            continue
        try:
            row[f"{key}_max_abs_diff"] = max_abs_diff(reference, sess.run(None, feeds))
        except Exception as e:  # noqa: BLE001
            row[f"{key}_error"] = f"run: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            del sessions[key]
    times: dict[str, list[float]] = collections.defaultdict(list)
    for sess in sessions.values():  # warm-up
        sess.run(None, feeds)
    order = list(sessions)
    for index in range(runs):
        # NOTE: the order rotates every round, so no variant always runs first (warm caches, clocks).
        for key in order[index % len(order):] + order[: index % len(order)]:
            start = time.perf_counter()
            sessions[key].run(None, feeds)
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times["input"])
    row["input_ms"] = base * 1000
    for key in sessions:
        if key != "input":
            row[f"{key}_ms"] = statistics.median(times[key]) * 1000
            row[f"{key}_latency_ratio"] = statistics.median(times[key]) / base
    return row


def _cell(row: dict[str, Any], tool: str, key: str) -> Any:
    if f"{tool}_error" in row and f"{tool}_{key}" not in row:
        return "failed"
    return row.get(f"{tool}_{key}")


def tables(rows: list[dict[str, Any]]) -> str:
    nodes = [[r["model"], r["nodes_in"], *(_cell(r, t, "nodes") for t in TOOLS)] for r in rows]
    latency = [[r["model"], r.get("input_ms"), *(_cell(r, t, "latency_ratio") for t in TOOLS)] for r in rows]
    diff = [[r["model"], *(_cell(r, t, "max_abs_diff") for t in TOOLS)] for r in rows]
    wall = [[r["model"], *(_cell(r, t, "wall_s") for t in TOOLS)] for r in rows]
    parts = [
        "Nodes (all graphs):\n\n" + benchlib.markdown_table(["model", "input", *TOOLS], nodes),
        "ORT CPU latency (ORT_ENABLE_ALL, 1 thread, batch 1): input median ms, then output/input ratio:\n\n"
        + benchlib.markdown_table(["model", "input ms", *TOOLS], latency),
        "Max abs output difference vs the input model:\n\n" + benchlib.markdown_table(["model", *TOOLS], diff),
        "Tool wall time, file to file (s):\n\n" + benchlib.markdown_table(["model", *TOOLS], wall),
    ]
    errors = [f"- {r['model']}: {k.removesuffix('_error')}: {v}" for r in rows for k, v in r.items()
              if k.endswith("_error")]
    if errors:
        parts.append("Failures:\n\n" + "\n".join(errors))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="interleaved timed runs per model (>= 30)")
    parser.add_argument("--only", nargs="*", help="model names (zoo names, or raw:NAME)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw PyTorch exports")
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_optimize.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        import onnxslim  # noqa: F401
    except ImportError:
        print("note: onnxslim is not installed (pip install onnxslim); its columns read 'failed'")
    env = benchlib.environment()
    only = set(args.only) if args.only else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-opt-") as tmp:
        workdir = Path(tmp)
        models = zoo_models(only)
        if not args.no_raw:
            models += raw_exports(workdir, only)
        for name, path, feeds in models:
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(bench_model(name, path, feeds, workdir, max(args.runs, 1)))
    print(tables(rows))
    if note := benchlib.busy_warning():
        print(note)
    benchlib.write_json(args.out, {"environment": env, "runs": args.runs, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
