"""Placement near magnitudes: a linear signal front end and written-out statistics stay float."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir

import onnxq
from onnxq.passes.quantization._plan import feeds_magnitude_sensitive, signal_front_end
from tests.passes.quantization.qdq_helpers import HOST

# A constant-Q-like front end: an anti-aliasing low-pass with decimation, two fixed filters (real,
# imaginary), power, sqrt, log; then a small network (Conv + Relu + Conv) on the log spectrum.
SPECTRAL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 1, 512] x) => (float[1, 4, 61] y) {
  lp = Conv<strides = [2], pads = [2, 2]>(x, klp)
  re = Conv<strides = [4]>(lp, kr)
  im = Conv<strides = [4]>(lp, ki)
  re2 = Mul(re, re)
  im2 = Mul(im, im)
  p = Add(re2, im2)
  pe = Add(p, eps)
  mag = Sqrt(pe)
  lg = Log(mag)
  h = Conv(lg, w1)
  r = Relu(h)
  y = Conv(r, w2)
}"""


def _spectral() -> ir.Model:
    proto = onnx.parser.parse_model(SPECTRAL)
    t = np.arange(16, dtype=np.float32)
    bands = np.array([0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2], np.float32)[:, None]
    window = np.hanning(16).astype(np.float32)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array((np.cos(bands * t) * window)[:, None, :].astype(np.float32), "kr"),
        onnx.numpy_helper.from_array((np.sin(bands * t) * window)[:, None, :].astype(np.float32), "ki"),
        onnx.numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        onnx.numpy_helper.from_array(np.array([[[0.1, 0.2, 0.4, 0.2, 0.1]]], np.float32), "klp"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 1)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1)).astype(np.float32), "w2"),
    ])
    return ir.from_proto(proto)


def _names(nodes: set[ir.Node]) -> set[str]:
    return {n.outputs[0].name or "" for n in nodes}


def test_filters_before_a_magnitude_are_the_front_end() -> None:
    model = _spectral()
    assert _names(signal_front_end(model.graph)) == {"lp", "re", "im", "re2", "im2", "p", "pe"}


def test_a_network_first_conv_is_not_a_front_end() -> None:
    # Conv -> Relu -> ... -> written-out LayerNorm: the Relu ends the linear region before any Sqrt.
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 8] x) => (float[1, 4, 8] y) {
      c = Conv(x, w)
      r = Relu(c)
      m = ReduceMean<axes = [1]>(r)
      d = Sub(r, m)
      d2 = Mul(d, d)
      v = ReduceMean<axes = [1]>(d2)
      s = Sqrt(v)
      y = Div(d, s)
    }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((4, 4, 1), np.float32), "w"))
    model = ir.from_proto(proto)
    assert signal_front_end(model.graph) == set()
    square = next(n for n in model.graph if n.op_type == "Mul")
    assert feeds_magnitude_sensitive(square) == "Sqrt"
    assert feeds_magnitude_sensitive(next(n for n in model.graph if n.op_type == "Conv")) is None


def test_quantize_keeps_the_front_end_float_and_the_network_int8() -> None:
    rng = np.random.default_rng(1)
    # Loud low band, quiet high bands: the case where one 8-bit step for all erases the quiet ones.
    t = np.arange(512, dtype=np.float32)
    feeds = [{"x": (20 * np.sin(0.02 * t + k) + 0.05 * rng.standard_normal(512)).astype(np.float32)[None, None]}
             for k in range(48)]
    model, report = onnxq.quantize(_spectral(), feeds, target=HOST)
    convs = {n.outputs[0].name: n for n in model.graph if n.op_type == "Conv"}
    assert not any(n.op_type == "QuantizeLinear" and n.inputs[0].name == "x" for n in model.graph)
    quantized_inputs = {
        n.outputs[0].name for n in model.graph if n.op_type == "Conv"
        and n.inputs[0] is not None and n.inputs[0].producer() is not None
        and n.inputs[0].producer().op_type == "DequantizeLinear"}
    # NOTE: the last Conv's output is renamed 'y_float' (a Q/DQ pair gives 'y' its INT8 range).
    assert len(convs) == 5 and quantized_inputs == {"h", "y_float"}, quantized_inputs
    assert report.self_check is not None
    assert all(o.sqnr_db > 25 for o in report.self_check.outputs), [o.sqnr_db for o in report.self_check.outputs]


def test_recovery_passes_leave_the_float_front_end_alone() -> None:
    # correct-bias and adaround change a layer to suit its rounded weights: on a filter that stays
    # float that would only add error (a constant-Q front end lost 10 dB this way).
    rng = np.random.default_rng(2)
    t = np.arange(512, dtype=np.float32)
    feeds = [{"x": (20 * np.sin(0.02 * t + k) + 0.05 * rng.standard_normal(512)).astype(np.float32)[None, None]}
             for k in range(24)]
    before = {k: v.const_value.numpy().copy() for k, v in _spectral().graph.initializers.items()}
    for recovery in (("correct-bias",), ("adaround",)):
        model, report = onnxq.quantize(_spectral(), feeds, target=HOST, recovery=recovery, self_check=False)
        changed = {k for k, v in model.graph.initializers.items() if k in before and v.const_value is not None
                   and not np.array_equal(v.const_value.numpy(), before[k])}
        assert not changed & {"klp", "kr", "ki"}, (recovery, changed)
        assert any(k.startswith(recovery[0]) for k in report.stats), report.stats
