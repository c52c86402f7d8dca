"""matmul-add-to-gemm (and its reverse) and fold-transpose-into-gemm: fires and declines."""

from __future__ import annotations

from onnxq.passes.fusion.fold_transpose_into_gemm import FoldTransposeIntoGemm
from onnxq.passes.fusion.matmul_add_to_gemm import MatMulAddToGemm
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'
W = "{0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4, 0.5, 0.6, 0.7, 0.8}"


def test_matmul_add_to_gemm_fires_both_operand_orders() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[2, 4] y, float[2, 4] z) <float[3, 4] w = """ + W + """, float[4] c = {1, 2, 3, 4}> {
  mm = MatMul(x, w)
  y = Add(mm, c)
  mm2 = MatMul(x, w)
  z = Add(c, mm2)
}
"""
    model = assert_fires(MatMulAddToGemm(), text, {"matmuls_to_gemm": 2})
    assert ops(model) == ["Gemm", "Gemm"]


def test_matmul_add_to_gemm_declines_rank_3() -> None:
    text = HEADER + """
g (float[1, 2, 3] x) => (float[1, 2, 4] y) <float[3, 4] w = """ + W + """, float[4] c = {1, 2, 3, 4}> {
  mm = MatMul(x, w)
  y = Add(mm, c)
}
"""
    assert_declines(MatMulAddToGemm(), text, "Rank of input_a and input_b must be 2")


def test_matmul_add_to_gemm_declines_rank_3_bias() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[1, 2, 4] y) <float[3, 4] w = """ + W + """, float[1, 1, 4] c = {1, 2, 3, 4}> {
  mm = MatMul(x, w)
  y = Add(mm, c)
}
"""
    assert_declines(MatMulAddToGemm(), text, "bias 'c' is not known to have rank <= 2")


def test_gemm_to_matmul_reverse() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[2, 4] y) <float[4, 3] w = """ + W + """, float[4] c = {1, 2, 3, 4}> {
  y = Gemm<transB = 1>(x, w, c)
}
"""
    model = assert_fires(MatMulAddToGemm(reverse=True), text, {"gemms_split": 1})
    assert ops(model) == ["MatMul", "Add"]


def test_gemm_to_matmul_declines_alpha() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[2, 4] y) <float[3, 4] w = """ + W + """> {
  y = Gemm<alpha = 2.0>(x, w)
}
"""
    assert_declines(MatMulAddToGemm(reverse=True), text, "Gemm has alpha or beta != 1")


def test_fold_transpose_into_gemm_fires() -> None:
    text = HEADER + """
g (float[3, 2] x, float[4, 3] w) => (float[2, 4] y) {
  xt = Transpose<perm = [1, 0]>(x)
  wt = Transpose(w)
  y = Gemm(xt, wt)
}
"""
    model = assert_fires(FoldTransposeIntoGemm(), text, {"transposes_folded": 2})
    assert ops(model) == ["Gemm"]
    gemm = next(iter(model.graph))
    assert gemm.attributes.get_int("transA", 0) == 1 and gemm.attributes.get_int("transB", 0) == 1


def test_fold_transpose_into_gemm_declines_shared_transpose() -> None:
    text = HEADER + """
g (float[3, 2] x, float[3, 4] w) => (float[2, 4] y, float[2, 3] t) {
  t = Transpose<perm = [1, 0]>(x)
  y = Gemm(t, w)
}
"""
    assert_declines(FoldTransposeIntoGemm(), text, "Transpose output 't' has 2 consumers")
