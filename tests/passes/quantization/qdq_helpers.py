"""Test helpers for the quantization passes: min/max ranges, ORT's optimized graph, checks."""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxq.calibration.ranges import Ranges, TensorRange
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import apply
from onnxq.passes.quantization import static_pipeline, tensors_to_calibrate
from onnxq.targets import Target, get_target

INTEGER_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearWhere",
    "MatMulIntegerToFloat",
)


def minmax_ranges(model: ir.Model, feeds: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]) -> Ranges:
    """Min/max of ``names`` over ``feeds``, measured by onnxruntime with those tensors exposed."""
    if not names:
        return Ranges({})
    proto = ir.serde.serialize_model(model)
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for feed in feeds:
        for name, value in zip(names, sess.run(list(names), dict(feed)), strict=True):
            lo[name] = min(lo[name], float(np.min(value)))
            hi[name] = max(hi[name], float(np.max(value)))
    return Ranges({n: TensorRange(lo[n], hi[n]) for n in names})


#: The ort-cpu profile for the CPU running the tests (7-bit weights on AVX2 without VNNI, where u8s8
#: products saturate; full 8-bit elsewhere): numeric checks on this machine hold only for graphs made
#: for this machine. Graphs for another CPU kind get structure checks or a numpy reference
#: (``tests/targets/test_u8s8_arithmetic.py``).
HOST = get_target("ort-cpu")


def quantize(
    model: ir.Model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    target: Target | None = None,
    per_channel: bool = True,
    exclude: tuple[str, ...] = (),
    include: tuple[str, ...] = (),
):
    """Static quantization of ``model`` in place with min/max ranges from ``feeds``; the PassResult."""
    target = target or HOST
    names = tensors_to_calibrate(model, target, include=include, exclude=exclude)
    ranges = minmax_ranges(model, feeds, names)
    pipeline = static_pipeline(target, per_channel=per_channel, exclude=exclude, include=include)
    return apply(model, pipeline, PassContext.with_resources([target, ranges]))


def run(model: ir.Model, feed: Mapping[str, np.ndarray], *, optimize: bool = True) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, dict(feed))


def optimized_ops(model: ir.Model) -> collections.Counter[str]:
    """Op histogram of the graph onnxruntime runs (ORT_ENABLE_ALL, saved and read back)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = path
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        ort.InferenceSession(
            ir.serde.serialize_model(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        optimized = onnx.load(path)
    return collections.Counter(n.op_type for n in optimized.graph.node)


def leftover_qdq(ops: Mapping[str, int]) -> int:
    return int(ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0))


def integer_kernels(ops: Mapping[str, int]) -> int:
    return sum(int(ops.get(k, 0)) for k in INTEGER_KERNELS)


def full_check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def op_counts(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph)


def build(text: str, seed: int = 0, **shapes: tuple[int, ...] | np.ndarray) -> ir.Model:
    """A model from ONNX text plus initializers: a shape gets seeded random N(0, 1/fan_in) weights."""
    import onnx.numpy_helper
    import onnx.parser

    rng = np.random.default_rng(seed)
    proto = onnx.parser.parse_model(text)
    for name, spec in shapes.items():
        if isinstance(spec, np.ndarray):
            array = spec
        else:
            fan_in = int(np.prod(spec[1:])) if len(spec) > 1 else 1
            array = (rng.standard_normal(spec) / np.sqrt(max(fan_in, 1))).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)
