"""canonicalize-activations, fuse-layer-norm, fuse-gelu: fires and declines."""

from __future__ import annotations

import pytest

from onnxq.errors import OptionError
from onnxq.passes.fusion.canonicalize_activations import CanonicalizeActivations
from onnxq.passes.fusion.fuse_gelu import FuseGelu
from onnxq.passes.fusion.fuse_layer_norm import FuseLayerNorm
from onnxq.passes.fusion.fuse_rms_norm import FuseRmsNorm
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops


def _header(opset: int = 18) -> str:
    return f'<ir_version: 10, opset_import: ["" : {opset}]>'


def test_clip_and_max_become_relu_min_max_becomes_clip() -> None:
    text = _header() + """
g (float[2, 5] x) => (float[2, 5] a, float[2, 5] b, float[2, 5] c) <float zero = {0.0}, float six = {6.0}> {
  a = Clip(x, zero)
  b = Max(x, zero)
  lo = Max(x, zero)
  c = Min(lo, six)
}
"""
    model = assert_fires(CanonicalizeActivations(), text, {"relus_made": 2, "min_max_to_clip": 1})
    assert sorted(ops(model)) == ["Clip", "Relu", "Relu"]


def test_relu_then_clip6_is_one_clip() -> None:
    text = _header() + """
g (float[2, 5] x) => (float[2, 5] y) <float zero = {0.0}, float six = {6.0}> {
  r = Relu(x)
  y = Clip(r, zero, six)
}
"""
    model = assert_fires(CanonicalizeActivations(), text, {"activations_merged": 1})
    assert ops(model) == ["Clip"]


def test_decomposed_hardswish_and_hardsigmoid() -> None:
    text = _header() + """
g (float[2, 5] x) => (float[2, 5] y, float[2, 5] z) <float zero = {0.0}, float six = {6.0}, float three = {3.0}> {
  t = Add(x, three)
  c = Clip(t, zero, six)
  m = Mul(c, x)
  y = Div(m, six)
  t2 = Add(x, three)
  c2 = Clip(t2, zero, six)
  z = Div(c2, six)
}
"""
    model = assert_fires(CanonicalizeActivations(), text, {"hardswish_fused": 1, "hardsigmoid_fused": 1})
    assert sorted(ops(model)) == ["HardSigmoid", "HardSwish"]


def test_activation_declines() -> None:
    text = _header() + """
g (float[2, 5] x) => (float[2, 5] y, float[2, 5] z) <float one = {1.0}, float[5] big = {0, 0, 0, 0, 0}> {
  y = Clip(x, one)
  z = Max(x, one)
}
"""
    assert_declines(CanonicalizeActivations(), text, "Clip min is not a constant 0")
    assert_declines(CanonicalizeActivations(), text, "Max operand is not a constant 0")


def test_hardswish_declines_below_opset_14() -> None:
    text = _header(13) + """
g (float[2, 5] x) => (float[2, 5] y) <float zero = {0.0}, float six = {6.0}, float three = {3.0}> {
  t = Add(x, three)
  c = Clip(t, zero, six)
  m = Mul(c, x)
  y = Div(m, six)
}
"""
    assert_declines(CanonicalizeActivations(), text, "needs opset >= 14, model has 13")


LAYER_NORM = """
g (float[2, 3, 8] x) => (float[2, 3, 8] y) <int64[1] axes = {-1}, float eps = {1e-5}, float two = {2.0},
   float[8] scale = {1, 2, 3, 4, 5, 6, 7, 8}, float[8] bias = {0, 1, 0, 1, 0, 1, 0, 1}> {
  mean = ReduceMean(x, axes)
  d = Sub(x, mean)
  dd = Pow(d, two)
  var = ReduceMean(dd, axes)
  ve = Add(var, eps)
  sd = Sqrt(ve)
  n = Div(d, sd)
  s = Mul(n, scale)
  y = Add(s, bias)
}
"""


def test_layer_norm_fires_both_orders() -> None:
    model = assert_fires(FuseLayerNorm(), _header() + LAYER_NORM, {"layernorms_fused": 1,
                                                                 "layernorm_biases_fused": 1})
    assert ops(model) == ["LayerNormalization"]
    other_order = LAYER_NORM.replace("dd = Pow(d, two)", "dd = Mul(d, d)").replace(
        "n = Div(d, sd)", "r = Reciprocal(sd)\n  n = Mul(r, d)").replace("s = Mul(n, scale)", "s = Mul(scale, n)")
    model = assert_fires(FuseLayerNorm(), _header() + other_order, {"layernorms_fused": 1,
                                                                    "layernorm_biases_fused": 1})
    assert ops(model) == ["LayerNormalization"]


def test_layer_norm_declines_on_broadcasting_scale() -> None:
    text = LAYER_NORM.replace("float[8] scale = {1, 2, 3, 4, 5, 6, 7, 8}", "float[3, 1] scale = {1, 2, 3}")
    assert_declines(FuseLayerNorm(), _header() + text, "scale 'scale' is not known to be rank 1")


def test_layer_norm_declines_below_opset_17() -> None:
    text = LAYER_NORM.replace("<int64[1] axes = {-1}, ", "<").replace("ReduceMean(x, axes)", "ReduceMean<axes = [-1]>(x)")
    text = text.replace("ReduceMean(dd, axes)", "ReduceMean<axes = [-1]>(dd)")
    assert_declines(FuseLayerNorm(), _header(16) + text, "needs opset >= 17, model has 16")


RMS_NORM = """
g (float[2, 3, 8] x) => (float[2, 3, 8] y) <int64[1] axes = {-1}, float eps = {1e-6}, float two = {2.0},
   float[8] scale = {1, 2, 3, 4, 5, 6, 7, 8}> {
  xx = Pow(x, two)
  ms = ReduceMean<keepdims = 1>(xx, axes)
  me = Add(ms, eps)
  rms = Sqrt(me)
  r = Reciprocal(rms)
  n = Mul(x, r)
  y = Mul(n, scale)
}
"""


def test_rms_norm_fires_both_orders() -> None:
    model = assert_fires(FuseRmsNorm(), _header(23) + RMS_NORM, {"rmsnorms_fused": 1})
    assert ops(model) == ["RMSNormalization"]
    model = assert_fires(FuseRmsNorm(), _header(23) + RMS_NORM.replace("y = Mul(n, scale)", "y = Mul(scale, n)"),
                         {"rmsnorms_fused": 1})
    assert ops(model) == ["RMSNormalization"]


def test_rms_norm_declines_on_broadcasting_scale_and_below_opset_23() -> None:
    text = RMS_NORM.replace("float[8] scale = {1, 2, 3, 4, 5, 6, 7, 8}", "float[3, 1] scale = {1, 2, 3}")
    assert_declines(FuseRmsNorm(), _header(23) + text, "scale 'scale' is not known to be rank 1")
    assert_declines(FuseRmsNorm(), _header(22) + RMS_NORM, "needs opset >= 23, model has 22")


GELU_ERF = """
g (float[2, 8] x) => (float[2, 8] y) <float sq = {1.4142135}, float one = {1.0}, float half = {0.5}> {
  d = Div(x, sq)
  e = Erf(d)
  a = Add(e, one)
  m = Mul(x, a)
  y = Mul(m, half)
}
"""
GELU_TANH = """
g (float[2, 8] x) => (float[2, 8] y) <float three = {3.0}, float c = {0.044715}, float k = {0.7978846},
   float one = {1.0}, float half = {0.5}> {
  p = Pow(x, three)
  cp = Mul(c, p)
  s = Add(x, cp)
  ks = Mul(k, s)
  t = Tanh(ks)
  a = Add(t, one)
  h = Mul(half, a)
  y = Mul(x, h)
}
"""


@pytest.mark.parametrize(
    ("opset", "body", "want"),
    [(20, GELU_ERF, ("", "Gelu")), (18, GELU_ERF, ("com.microsoft", "Gelu")),
     (20, GELU_TANH, ("", "Gelu")), (18, GELU_TANH, ("com.microsoft", "FastGelu"))],
)
def test_gelu_fires_by_opset(opset: int, body: str, want: tuple[str, str]) -> None:
    header = f'<ir_version: 10, opset_import: ["" : {opset}, "com.microsoft" : 1]>'
    model = assert_fires(FuseGelu(), header + body, {"gelus_fused": 1}, rtol=1e-4, atol=1e-5)
    (node,) = list(model.graph)
    assert (node.domain, node.op_type) == want


def test_gelu_declines_for_tensorrt_below_opset_20() -> None:
    assert_declines(FuseGelu(target="tensorrt"), _header() + GELU_ERF, "target 'tensorrt' has no contrib Gelu")


def test_gelu_unknown_target_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="unknown target 'tpu'"):
        FuseGelu(target="tpu")
