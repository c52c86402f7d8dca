"""fold-batchnorm: fires into Conv/ConvTranspose/Gemm/MatMul and standalone; declines with reasons."""

from __future__ import annotations

from onnxq.passes.fusion.fold_batchnorm import FoldBatchNorm
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'
BN_PARAMS = """
  <float[4] s = {1.5, 0.5, -1.0, 2.0}, float[4] b = {0.1, 0.2, 0.3, -0.4},
   float[4] m = {0.5, -0.5, 0.0, 1.0}, float[4] v = {1.0, 2.0, 0.5, 0.25}>
"""
CONV = HEADER + """
g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y)
  <float[4, 3, 3, 3] w = {""" + ",".join(str((i % 7) * 0.1 - 0.3) for i in range(108)) + """},
   float[4] s = {1.5, 0.5, -1.0, 2.0}, float[4] b = {0.1, 0.2, 0.3, -0.4},
   float[4] m = {0.5, -0.5, 0.0, 1.0}, float[4] v = {1.0, 2.0, 0.5, 0.25}> {
  c = Conv<pads = [1, 1, 1, 1]>(x, w)
  y = BatchNormalization<epsilon = 0.001>(c, s, b, m, v)
}
"""


def test_fires_into_conv() -> None:
    model = assert_fires(FoldBatchNorm(), CONV, {"batchnorms_folded": 1})
    assert ops(model) == ["Conv"]
    assert len(model.graph.initializers) == 2


def test_fires_into_matmul_and_gemm() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[2, 4] y, float[2, 4] z)
  <float[3, 4] w = {0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4, 0.5, 0.6, 0.7, 0.8},
   float[4, 3] w2 = {0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4, 0.5, 0.6, 0.7, 0.8},
   float[4] c = {1.0, 2.0, 3.0, 4.0},
   float[4] s = {1.5, 0.5, -1.0, 2.0}, float[4] b = {0.1, 0.2, 0.3, -0.4},
   float[4] m = {0.5, -0.5, 0.0, 1.0}, float[4] v = {1.0, 2.0, 0.5, 0.25}> {
  mm = MatMul(x, w)
  y = BatchNormalization(mm, s, b, m, v)
  gm = Gemm<transB = 1, beta = 0.5>(x, w2, c)
  z = BatchNormalization(gm, s, b, m, v)
}
"""
    model = assert_fires(FoldBatchNorm(), text, {"batchnorms_folded": 2})
    assert "BatchNormalization" not in ops(model)


def test_standalone_becomes_mul_add() -> None:
    text = HEADER + """
g (float[1, 4, 3, 3] x) => (float[1, 4, 3, 3] y)""" + BN_PARAMS + """{
  r = Relu(x)
  y = BatchNormalization(r, s, b, m, v)
}
"""
    model = assert_fires(FoldBatchNorm(), text, {"batchnorms_decomposed": 1})
    assert ops(model) == ["Relu", "Mul", "Add"]


def test_fires_inside_if_body() -> None:
    text = HEADER + """
g (bool cond, float[2, 3] x) => (float[2, 4] y) {
  y = If(cond) <
    then_branch = t () => (float[2, 4] o)
      <float[3, 4] w = {0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4, 0.5, 0.6, 0.7, 0.8},
       float[4] s = {1.5, 0.5, -1.0, 2.0}, float[4] b = {0.1, 0.2, 0.3, -0.4},
       float[4] m = {0.5, -0.5, 0.0, 1.0}, float[4] v = {1.0, 2.0, 0.5, 0.25}> {
      mm = MatMul(x, w)
      o = BatchNormalization(mm, s, b, m, v)
    },
    else_branch = e () => (float[2, 4] o2) {
      z = Constant<value = float[2, 4] {0, 0, 0, 0, 0, 0, 0, 0}>()
      o2 = Identity(z)
    }
  >
}
"""
    import numpy as np

    feeds = {"cond": np.array(True), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    model = assert_fires(FoldBatchNorm(), text, {"batchnorms_folded": 1}, feeds=feeds)
    assert "BatchNormalization" not in ops(model)


def test_declines_when_conv_output_has_another_consumer() -> None:
    text = CONV.replace("}\n", "  z = Relu(c)\n}\n", 1)
    text = text.replace("(float[1, 4, 6, 6] y)", "(float[1, 4, 6, 6] y, float[1, 4, 6, 6] z)")
    assert_declines(FoldBatchNorm(decompose=False), text, "Conv output 'c' has 2 consumers")


def test_declines_when_weight_is_not_constant() -> None:
    text = HEADER + """
g (float[1, 3, 6, 6] x, float[4, 3, 3, 3] w) => (float[1, 4, 4, 4] y)""" + BN_PARAMS + """{
  c = Conv(x, w)
  y = BatchNormalization(c, s, b, m, v)
}
"""
    model = assert_declines(FoldBatchNorm(decompose=False), text, "Conv weight 'w' is not a constant of this graph")
    assert ops(model) == ["Conv", "BatchNormalization"]


def test_fires_into_conv_transpose() -> None:
    text = HEADER + """
g (float[1, 2, 3, 3] x) => (float[1, 4, 5, 5] y)
  <float[2, 4, 3, 3] w = {""" + ",".join(str((i % 9) * 0.05 - 0.2) for i in range(72)) + """},
   float[4] s = {1.5, 0.5, -1.0, 2.0}, float[4] b = {0.1, 0.2, 0.3, -0.4},
   float[4] m = {0.5, -0.5, 0.0, 1.0}, float[4] v = {1.0, 2.0, 0.5, 0.25}> {
  c = ConvTranspose(x, w)
  y = BatchNormalization(c, s, b, m, v)
}
"""
    model = assert_fires(FoldBatchNorm(), text, {"batchnorms_folded": 1})
    assert ops(model) == ["ConvTranspose"]


def test_declines_training_mode() -> None:
    text = CONV.replace("BatchNormalization<epsilon = 0.001>", "BatchNormalization<epsilon = 0.001, training_mode = 1>")
    text = text.replace("(float[1, 4, 6, 6] y)", "(float[1, 4, 6, 6] y, float[4] rm, float[4] rv)").replace(
        "  y = BatchNormalization", "  y, rm, rv = BatchNormalization")
    assert_declines(FoldBatchNorm(), text, "BatchNormalization")
