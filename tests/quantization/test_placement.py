"""Measured placement: onnxruntime's per-node profile attributed to graph nodes, and the guard's rung on it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from onnxq.quantization import guard as guard_module
from onnxq.quantization import placement
from onnxq.quantization.guard import quantize_guarded
from onnxq.quantization.quantize import quantize
from onnxq.quantization.sensitivity import exact

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
convs (float[1, 3, 128, 128] x) => (float[1, 16, 128, 128] y) {
  a = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
  ar = Relu(a)
  c = Conv <pads = [1, 1, 1, 1]> (ar, w2, b2)
  cr = Relu(c)
  d = Conv <pads = [1, 1, 1, 1], group = 16> (cr, w3, b3)
  y = Add(d, cr)
}
"""
NAMES = ["model/stem(0", "relu1", "conv2", "relu2", "depthwise", "residual"]

STEM = NAMES[0]  # a TF-like name that is not a valid regular expression as it stands


def model() -> ir.Model:
    proto = onnx.parser.parse_model(TEXT)
    for node, name in zip(proto.graph.node, NAMES, strict=True):
        node.name = name
    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 16, 3, 3), "b2": (16,), "w3": (16, 1, 3, 3), "b3": (16,)}
    for name, shape in shapes.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(
            rng.normal(0, 0.3, shape).astype(np.float32), name))
    return ir.from_proto(proto)


def feeds(n: int = 24) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32)} for _ in range(n)]


def _models() -> tuple[ir.Model, ir.Model]:
    as_float, _ = quantize(model(), feeds(), include=("(?!)",), self_check=False, cpu="avx2")
    int8, _ = quantize(model(), feeds(), self_check=False, cpu="avx2")
    return as_float, int8


def test_every_quantized_convolution_is_attributed_on_both_sides() -> None:
    as_float, int8 = _models()
    costs, float_total, int8_total = placement.node_costs(as_float, int8, feeds()[0], budget_s=0.2)
    by_name = {c.name: c for c in costs}
    # the three convolutions run QLinearConv (NHWC, "_token_" names) in the INT8 session and float
    # convolutions (NCHWc, named after their fused Relu's / Add's output) in the float one
    assert {STEM, "conv2", "depthwise"} <= set(by_name)
    for name in (STEM, "conv2", "depthwise"):
        assert by_name[name].kernel == "QLinearConv" and by_name[name].op_type == "Conv"
        assert by_name[name].int8_us > 0 and by_name[name].float_us > 0
    assert float_total > 0 and int8_total > 0
    # the residual Add is fused into the depthwise convolution in float: never proposed
    assert "residual" not in by_name


def test_measure_proposes_by_its_thresholds() -> None:
    as_float, int8 = _models()
    everything = placement.measure(as_float, int8, feeds()[0], budget_s=0.2, slower_by=0.0, min_share=-1.0)
    assert {STEM, "conv2", "depthwise"} <= set(everything.names)
    assert placement.measure(as_float, int8, feeds()[0], budget_s=0.2, slower_by=1e9).names == []


def test_guard_leaves_the_measured_nodes_float(monkeypatch: pytest.MonkeyPatch) -> None:
    # the profile decides which nodes; here it is forced to name the stem, whose name needs escaping
    measured: list[ir.Model] = []
    made: list[tuple[ir.Model, dict[str, object]]] = []

    def fake(float_model: ir.Model, int8_model: ir.Model, feed: object, **_: object) -> placement.Placement:
        measured.append(int8_model)
        cost = placement.NodeCost(STEM, "Conv", "QLinearConv", 10.0, 30.0)
        return placement.Placement([cost], 100.0, 120.0, 0.0)

    def recording(m: ir.Model, data: object, **kwargs: object) -> tuple[ir.Model, object]:
        result, report = quantize(m, data, **kwargs)
        made.append((result, kwargs))
        return result, report

    monkeypatch.setattr(guard_module.placement, "measure", fake)
    monkeypatch.setattr(guard_module, "quantize", recording)
    _, _, guard = quantize_guarded(model(), feeds(), cpu="avx2")
    placed = [r for r in guard.rungs if "measured placement" in r.name]
    assert measured and len(placed) == 1, [r.name for r in guard.rungs]
    assert placed[0].name == "plain (minmax) + measured placement (1 node(s) float)"
    assert "1 QLinearConv" in placed[0].note and placed[0].within_floor
    # measured on the plain result; re-quantized with the stem excluded by its escaped name, which
    # leaves it float: its weight is read directly, not through a DequantizeLinear
    assert any(n.op_type == "DequantizeLinear" for n in measured[0].graph)
    result, kwargs = next((r, k) for r, k in made if k.get("exclude"))
    assert kwargs["exclude"] == [exact(STEM)] and kwargs["method"] == "minmax"
    nodes = {n.name: n for n in result.graph}
    assert nodes[STEM].inputs[1].producer() is None
    assert nodes["conv2"].inputs[1].producer().op_type == "DequantizeLinear"
