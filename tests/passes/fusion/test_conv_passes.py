"""fold-pad-into-conv, fold-conv-add-bias, fold-mul-into-weights: fires and declines."""

from __future__ import annotations

import numpy as np

from onnxq.passes.fusion.fold_conv_add_bias import FoldConvAddBias
from onnxq.passes.fusion.fold_mul_into_weights import FoldMulIntoWeights
from onnxq.passes.fusion.fold_pad_into_conv import FoldPadIntoConv
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'
W = "{" + ",".join(str((i % 5) * 0.1 - 0.2) for i in range(2 * 3 * 3 * 3)) + "}"
INITS = "<float[2, 3, 3, 3] w = " + W + ", float[2] b = {0.5, -0.5}, int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}"


def _conv(body: str, inits: str = "", out: str = "float[1, 2, 6, 6] y") -> str:
    return HEADER + f"\ng (float[1, 3, 6, 6] x) => ({out}) {INITS}{inits}> {{\n{body}\n}}\n"


def test_pad_into_conv_fires() -> None:
    model = assert_fires(FoldPadIntoConv(), _conv("  t = Pad(x, p)\n  y = Conv(t, w, b)"), {"pads_folded": 1})
    assert ops(model) == ["Conv"]
    assert list(next(iter(model.graph)).attributes.get_ints("pads")) == [1, 1, 1, 1]


def test_pad_into_average_pool_fires() -> None:
    text = _conv("  t = Pad(x, p)\n  y = AveragePool<kernel_shape = [3, 3], count_include_pad = 1>(t)",
                 out="float[1, 3, 6, 6] y")
    model = assert_fires(FoldPadIntoConv(), text, {"pads_folded": 1})
    assert ops(model) == ["AveragePool"]


def test_pad_into_average_pool_declines_without_count_include_pad() -> None:
    text = _conv("  t = Pad(x, p)\n  y = AveragePool<kernel_shape = [3, 3]>(t)", out="float[1, 3, 6, 6] y")
    assert_declines(FoldPadIntoConv(), text, "count_include_pad=0")


def test_pad_into_conv_declines_reflect() -> None:
    text = _conv('  t = Pad<mode = "reflect">(x, p)\n  y = Conv(t, w, b)')
    assert_declines(FoldPadIntoConv(), text, "mode must be 'constant'")


def test_conv_add_bias_fires() -> None:
    text = _conv("  c = Conv<pads = [1, 1, 1, 1]>(x, w)\n  y = Add(k, c)", ", float[1, 2, 1, 1] k = {1.0, -2.0}")
    model = assert_fires(FoldConvAddBias(), text, {"biases_folded": 1})
    assert ops(model) == ["Conv"]


def test_conv_add_bias_declines_spatial_constant() -> None:
    text = _conv("  c = Conv<pads = [1, 1, 1, 1]>(x, w, b)\n  y = Add(c, k)",
                 ", float[1, 1, 1, 6] k = {1, 2, 3, 4, 5, 6}")
    assert_declines(FoldConvAddBias(), text, "'k' of shape [1, 1, 1, 6] is not per-channel")


def test_mul_and_div_into_conv_and_matmul() -> None:
    text = HEADER + """
g (float[1, 3, 6, 6] x, float[2, 3] v) => (float[1, 2, 4, 4] y, float[2, 2] z, float[2, 2] u) """ + INITS + """,
   float[2, 1, 1] s = {2.0, -0.5}, float[3, 2] m = {1, 2, 3, 4, 5, 6}, float[2] d = {4.0, 0.25}, float k = {3.0}> {
  c = Conv(x, w, b)
  y = Mul(s, c)
  mm = MatMul(v, m)
  z = Div(mm, d)
  sv = Mul(v, k)
  u = MatMul(sv, m)
}
"""
    model = assert_fires(FoldMulIntoWeights(), text, {"muls_folded": 3})
    assert ops(model) == ["Conv", "MatMul", "MatMul"]


def test_mul_declines_non_constant_and_div_by_zero() -> None:
    text = HEADER + """
g (float[2, 3] v, float[2] s) => (float[2, 2] z, float[2, 2] u) <float[3, 2] m = {1, 2, 3, 4, 5, 6},
   float[2] d = {0.0, 1.0}> {
  mm = MatMul(v, m)
  z = Mul(mm, s)
  mm2 = MatMul(v, m)
  u = Div(mm2, d)
}
"""
    assert_declines(FoldMulIntoWeights(), text, "'s' is not a constant")
    assert_declines(FoldMulIntoWeights(), text, "'d' is not a constant without zeros")


AFFINE_CONV = """<ir_version: 8, opset_import: ["" : 14]>
g (float[1, 4, 8, 8] x) => (float[1, 6, 8, 8] y) <float a = {0.5}, float b = {-1.25},
    float[6, 4, 1, 1] w = {PW}, float[6] bias = {1, 2, 3, 4, 5, 6}, float[6, 6, 3, 3] w3 = {K3}> {
  m = Mul(x, a)
  s = Add(m, b)
  p = Conv(s, w, bias)
  q = Mul(p, a)
  r = Add(q, b)
  y = Conv<pads = [1, 1, 1, 1]>(r, w3)
}
"""


def _affine_text() -> str:
    rng = np.random.default_rng(3)
    return AFFINE_CONV.replace("PW", ", ".join(f"{v:.3f}" for v in rng.normal(0, 1, 24))).replace(
        "K3", ", ".join(f"{v:.3f}" for v in rng.normal(0, 1, 324)))


def test_fold_affine_into_conv_folds_the_pointwise_shift_and_both_scales() -> None:
    from onnxq.passes.fusion.fold_affine_into_conv import FoldAffineIntoConv

    model = assert_fires(FoldAffineIntoConv(), _affine_text(), {"affines_folded": 2}, atol=1e-4)
    # NOTE: the affine before the padded 3x3 Conv stays: its border outputs would see zeros
    assert ops(model) == ["Conv", "Mul", "Add", "Conv"]


def test_fold_affine_into_conv_declines_a_shift_before_a_padded_conv() -> None:
    from onnxq.passes.fusion.fold_affine_into_conv import FoldAffineIntoConv

    text = _affine_text().replace("  m = Mul(x, a)\n  s = Add(m, b)\n  p = Conv(s, w, bias)\n  q = Mul(p, a)\n",
                                  "  p = Conv(x, w, bias)\n  q = Identity(p)\n")
    assert_declines(FoldAffineIntoConv(), text, "the Conv pads its input")
