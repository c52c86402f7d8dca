"""Measures static ort-cpu quantization on zoo models: accuracy, fusion, 1-thread latency vs FP32.

Not a test (timings on a shared machine are noise-prone, so they are reported, not asserted):

    python tests/passes/quantization/measure_zoo.py [model ...] [--cpu avx2] [--rounds 7]

Pipeline: optimize preset (float fusions), tensors_to_calibrate, calibrate (min/max over the zoo's
calibration split), static_pipeline. Latency: median over interleaved rounds of the per-round
median of single-sample runs, FP32 and INT8 sessions alternating.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import onnxq  # noqa: E402
from models import zoo  # noqa: E402
from onnxq.calibration import calibrate  # noqa: E402
from onnxq.framework.context import PassContext  # noqa: E402
from onnxq.framework.pipeline import Pipeline, apply  # noqa: E402
from onnxq.framework.registry import PassRegistry  # noqa: E402
from onnxq.passes.quantization import static_pipeline, tensors_to_calibrate  # noqa: E402
from onnxq.targets import get_target  # noqa: E402

DEFAULT = ("digits_cnn", "resnet_digits", "mobilenetv2_digits", "transformer_digits")
INTEGER = ("QLinear", "QGemm", "MatMulIntegerToFloat", "NhwcMaxPool")


def quantize_zoo_model(name: str, out: Path, *, cpu: str | None = None, method: str = "minmax") -> dict:
    """Quantizes one zoo model into ``out``; returns stats and diagnostics."""
    model = onnxq.load_model(zoo.model_path(name))
    registry = PassRegistry.default()
    prepare = "optimize" if "optimize" in registry else "cleanup"
    apply(model, Pipeline([registry.create(prepare)]))
    target = get_target("ort-cpu", cpu=cpu)
    tensors = tensors_to_calibrate(model, target)
    calib = zoo.load_calib(name)
    ranges = calibrate(model, calib, method=method, tensors=tensors)
    result = apply(model, static_pipeline(target), PassContext.with_resources([target, ranges]))
    onnxq.save_model(model, out)
    return {
        "stats": dict(result.stats),
        "diagnostics": [str(d) for d in result.diagnostics],
        "target": target,
    }


def optimized_ops(path: Path) -> collections.Counter[str]:
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def latency(
    fp32: Path, int8: Path, feed: dict[str, np.ndarray], rounds: int, runs: int
) -> tuple[float, float]:
    """Median ms of FP32 and INT8 (1 thread), interleaved rounds."""
    sessions = []
    for path in (fp32, int8):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"]))
    for sess in sessions:
        for _ in range(5):
            sess.run(None, feed)
    medians: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, sess in enumerate(sessions):
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - start)
            medians[i].append(statistics.median(times) * 1e3)
    return statistics.median(medians[0]), statistics.median(medians[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=list(DEFAULT))
    parser.add_argument("--cpu", default=None)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1, help="samples per latency run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = Path(tmp) / f"{name}.int8.onnx"
            t0 = time.perf_counter()
            info = quantize_zoo_model(name, out, cpu=args.cpu, method=args.method)
            took = time.perf_counter() - t0
            fp32_path = zoo.model_path(name)
            base = zoo.evaluate(name)
            quant = zoo.evaluate(name, out)
            ops = optimized_ops(out)
            fused = sum(v for k, v in ops.items() if k.startswith(INTEGER))
            inputs, _ = zoo.load_eval(name)
            feed = {k: v[: args.batch] for k, v in inputs.items()}
            f_ms, q_ms = latency(fp32_path, out, feed, args.rounds, args.runs)
            print(
                f"{name}: metric {base:.4f} -> {quant:.4f} ({(quant - base) * 100:+.2f} pt); "
                f"latency {f_ms:.3f} -> {q_ms:.3f} ms ({f_ms / q_ms:.2f}x); quantize {took:.1f}s; "
                f"integer kernels {fused}, leftover Q {ops.get('QuantizeLinear', 0)} DQ {ops.get('DequantizeLinear', 0)}"
            )
            print(f"  target: {info['target'].describe()}")
            print(f"  optimized ops: {dict(sorted(ops.items()))}")
            print(f"  stats: {info['stats']}")
            for d in info["diagnostics"]:
                print(f"  {d}")


if __name__ == "__main__":
    main()
