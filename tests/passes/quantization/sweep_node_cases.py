"""Hostile sweep: the static QDQ pipeline over onnx's node test cases (never crash, always valid).

For every case whose model has an op the ort-cpu target quantizes, ranges are the min/max of
every float tensor on the case's own inputs; the result must pass the full checker, load in
onnxruntime (ORT_ENABLE_ALL) and run on the case's inputs. Used by ``test_node_case_sweep``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxq.calibration.ranges import Ranges, TensorRange
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import apply
from onnxq.passes.quantization import static_pipeline, tensors_to_calibrate
from onnxq.targets import get_target

TOOL = Path(__file__).resolve().parents[3] / "tools" / "conformance.py"


def conformance() -> Any:
    name = "onnxq_conformance_tool"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOL)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def ranges_from_case(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str]) -> Ranges:
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(names, feed)
    tensors = {}
    for name, value in zip(names, outs, strict=True):
        value = np.asarray(value, np.float64)
        finite = value[np.isfinite(value)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        tensors[name] = TensorRange(lo, hi)
    return Ranges(tensors)


def check_case(case: Any, target_ops: frozenset[str]) -> str | None:
    """None when the case is fine or not applicable, "quantized" when QDQ went in and the result is
    valid; else what went wrong."""
    if not any(n.op_type in target_ops for n in case.model.graph.node):
        return None
    target = get_target("ort-cpu")  # NOTE: this machine's CPU kind: the result is run here
    inputs, _ = case.data_sets[0]
    names = [
        i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}
    ]
    if any(not isinstance(x, np.ndarray) for x in inputs):
        return None  # sequences / optionals
    feed = dict(zip(names, inputs, strict=False))
    model = ir.serde.deserialize_model(case.model)
    try:
        tensors = tensors_to_calibrate(model, target)
        if not tensors:
            return None
        ranges = ranges_from_case(case.model, feed, tensors)
        result = apply(model, static_pipeline(target), PassContext.with_resources([target, ranges]))
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto, full_check=True)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
    except Exception as e:  # noqa: BLE001  # the sweep reports every failure by case
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return "quantized" if result.modified else None


def sweep() -> tuple[int, int, dict[str, str]]:
    """(cases with a quantizable op, cases quantized, failures by case name)."""
    tool = conformance()
    cases, _ = tool.runnable_cases(tool.collect_cases())
    ops = get_target("ort-cpu").integer_ops
    failures = {}
    tried = quantized = 0
    for case in cases:
        if any(n.op_type in ops for n in case.model.graph.node):
            tried += 1
        outcome = check_case(case, ops)
        if outcome == "quantized":
            quantized += 1
        elif outcome:
            failures[case.name] = outcome
    return tried, quantized, failures


if __name__ == "__main__":
    tried, quantized, failures = sweep()
    print(f"{tried} cases with quantizable ops, {quantized} quantized, {len(failures)} failures")
    for name, error in sorted(failures.items()):
        print(f"{name}: {error}")
