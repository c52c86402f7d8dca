"""Exporters' declarations are hints: wrong output shapes and literal -1 dims (issue: real models).

An opset-12 export declared its output ``[1, seqlen]`` while it computes ``[T, 1, C]``;
``collapse-reshapes`` made the run-time Reshape target constant from that declaration and the
optimized model returned ``(1, T*C)``. Legacy exporters write ``dim_value: -1`` for dynamic axes,
which calibration refused.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from onnxq import quantize
from onnxq.calibration.data import CalibrationData
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import apply
from onnxq.passes.fusion import optimize_pipeline
from onnxq.validation.self_check import self_check

# A run-time Reshape (Shape -> Gather -> Concat) to [N, 1, 8] feeding the graph output, declared [1, seqlen].
LYING_OUTPUT = """<ir_version: 7, opset_import: ["" : 12]>
g (float[N, 8] x) => (float[1, seqlen] y) {
  s = Shape(x)
  i0 = Constant<value = int64[1] {0}>()
  n = Gather(s, i0)
  one = Constant<value = int64[1] {1}>()
  c = Constant<value = int64[1] {8}>()
  shp = Concat<axis=0>(n, one, c)
  r = Reshape(x, shp)
  y = Identity(r)
}"""

# The same, with a wrong intermediate value_info and a MatMul so that quantize has work to do.
LYING_VALUE_INFO = """<ir_version: 7, opset_import: ["" : 12]>
g (float[N, 8] x) => (float[1, seqlen] y) <float[8, 8] w, float[1, 64] r> {
  m = MatMul(x, w)
  s = Shape(m)
  i0 = Constant<value = int64[1] {0}>()
  n = Gather(s, i0)
  one = Constant<value = int64[1] {1}>()
  c = Constant<value = int64[1] {8}>()
  shp = Concat<axis=0>(n, one, c)
  r = Reshape(m, shp)
  y = Relu(r)
}"""


def _proto(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    for name, array in weights.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto)
    return proto


def _run(model: ir.Model | onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_optimize_keeps_the_shape_the_graph_computes_not_the_declared_one() -> None:
    proto = _proto(LYING_OUTPUT)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    want = _run(proto, {"x": x})
    assert want.shape == (5, 1, 8)
    model = ir.serde.deserialize_model(proto)
    result = apply(model, optimize_pipeline(), PassContext())
    assert "collapse-reshapes.reshape_shapes_materialized" not in result.stats
    got = _run(model, {"x": x})
    assert got.shape == want.shape and np.array_equal(got, want)
    # the declaration may stay (the checker requires one) but no rewrite relied on it
    shape = model.graph.outputs[0].shape
    assert shape is None or len(shape) == 3 or list(shape) == [1, ir.SymbolicDim("seqlen")]


def test_quantize_returns_outputs_of_the_original_shape() -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
    proto = _proto(LYING_VALUE_INFO, w=w)
    feeds = [{"x": rng.standard_normal((3, 8)).astype(np.float32)} for _ in range(24)]
    model, report = quantize(ir.serde.deserialize_model(proto), feeds)
    for feed in feeds[:4]:
        want, got = _run(proto, feed), _run(model, feed)
        assert got.shape == want.shape == (3, 1, 8)
    assert not any("differs in shape" in w for w in report.self_check.warnings)


def test_self_check_fails_an_output_of_another_shape_with_the_same_numbers() -> None:
    proto = _proto(LYING_OUTPUT)
    flat = onnx.parser.parse_model(LYING_OUTPUT.replace("shp = Concat<axis=0>(n, one, c)",
                                                        "shp = Constant<value = int64[2] {1, -1}>()"))
    x = {"x": np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)}
    assert np.array_equal(_run(proto, x).ravel(), _run(flat, x).ravel())  # same numbers, same order
    report = self_check(ir.serde.deserialize_model(proto), ir.serde.deserialize_model(flat), [x],
                        target="tensorrt")  # NOTE: fidelity only, no latency run
    [out] = report.outputs
    assert out.mismatch and "[1, 40]" in out.mismatch and "[5, 1, 8]" in out.mismatch
    assert out.sqnr_db == -math.inf
    assert any("differs in shape or dtype" in w for w in report.warnings)


LITERAL_MINUS_ONE = """<ir_version: 6, opset_import: ["" : 11]>
g (float[-1, 3, -1, -1] x) => (float[-1, 4, -1, -1] y) <float[4, 3, 3, 3] w, float[4] b> {
  c = Conv<pads=[1, 1, 1, 1]>(x, w, b)
  y = Relu(c)
}"""


def test_a_literal_minus_one_dim_is_dynamic_and_calibrates() -> None:
    rng = np.random.default_rng(3)
    text = LITERAL_MINUS_ONE
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [-1, 3, -1, -1]
    feeds = [{"x": rng.standard_normal((1, 3, 48, 64 + 8 * (i % 3))).astype(np.float32)} for i in range(20)]
    data = CalibrationData.from_source(feeds)
    assert len([f for _, f in data.feeds(ir.serde.deserialize_model(proto))]) == 20
    model, report = quantize(ir.serde.deserialize_model(proto), feeds)
    assert report.calibration_samples > 0 and report.stats.get("insert-qdq.nodes_quantized", 0) >= 1
    got, want = _run(model, feeds[0]), _run(proto, feeds[0])
    assert got.shape == want.shape


def test_quantize_finds_an_optimize_pass_that_changes_outputs_and_goes_on_without_it(monkeypatch) -> None:
    from onnxq.framework.base import PassResult
    from onnxq.passes.fusion.fold_mul_into_weights import FoldMulIntoWeights

    def corrupt(self, model, ctx):  # a fusion gone wrong: it doubles the first weight it sees
        for value in model.graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype == ir.DataType.FLOAT:
                value.const_value = ir.tensor(value.const_value.numpy() * 2, name=value.name)
                return PassResult(True, {"broken": 1})
        return PassResult(False, {})

    monkeypatch.setattr(FoldMulIntoWeights, "run", corrupt)
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
    proto = _proto(LYING_VALUE_INFO, w=w)
    feeds = [{"x": rng.standard_normal((3, 8)).astype(np.float32)} for _ in range(24)]
    model, report = quantize(ir.serde.deserialize_model(proto), feeds)
    warnings = [str(d) for d in report.diagnostics]
    assert any("pass 'fold-mul-into-weights' changed the float model's outputs" in d for d in warnings), warnings
    assert report.stats["optimize.passes_skipped"] == 1
    want, got = _run(proto, feeds[0]), _run(model, feeds[0])
    assert np.abs(want - got).max() < 0.05 * np.abs(want).max()
