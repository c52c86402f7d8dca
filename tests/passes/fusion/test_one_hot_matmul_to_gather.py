"""one-hot-matmul-to-gather: one-hot times a constant matrix -> a row lookup, out-of-range tokens too."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.passes.fusion.one_hot_matmul_to_gather import OneHotMatMulToGather
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 15]>'
K, N = 5, 3
TABLE = "{" + ", ".join(str(round(0.1 * i - 0.7, 2)) for i in range(K * N)) + "}"


def _model(equal: str, classes: str = "{0, 1, 2, 3, 4}", x: str = "int32[2, 7, 1] x", rows: int = K) -> str:
    table = "{" + ", ".join(str(round(0.1 * i - 0.7, 2)) for i in range(rows * N)) + "}"
    inits = f"int32[1, 1, {K}] c = {classes}, float[{rows}, {N}] w = {table}, float[{N}] b = {{0.5, -1.0, 2.0}}"
    body = f"  e = {equal}\n  h = Cast<to = 1>(e)\n  m = MatMul(h, w)\n  y = Add(m, b)"
    return HEADER + f"\ng ({x}) => (float[2, 7, {N}] y) <{inits}> {{\n{body}\n}}\n"


@pytest.mark.parametrize("equal", ["Equal(x, c)", "Equal(c, x)"])
def test_fires_with_out_of_range_tokens(equal: str) -> None:
    # NOTE: tokens below 0 and from K up select no row of the one-hot: a zero row of the lookup
    x = np.array([0, 4, 2, -1, 5, 99, 3, 1, 1, 0, -7, 4, 2, 6], np.int32).reshape(2, 7, 1)
    model = assert_fires(OneHotMatMulToGather(), _model(equal), {"one_hot_lookups": 1}, feeds={"x": x})
    assert ops(model) == ["Squeeze", "Cast", "GreaterOrEqual", "Less", "And", "Where", "Gather", "Add"]
    gather = next(n for n in model.graph if n.op_type == "Gather")
    np.testing.assert_array_equal(gather.inputs[0].const_value.numpy()[K], np.zeros(N, np.float32))


@pytest.mark.parametrize(("text", "reason"), [
    (_model("Equal(x, c)", classes="{0, 1, 2, 4, 3}"), "not 0, 1, ..., K-1"),
    (_model("Equal(x, c)", x="int32[2, 7, 5] x"), "last axis is not 1"),
])
def test_declines(text: str, reason: str) -> None:
    assert_declines(OneHotMatMulToGather(), text, reason)


def test_byte_tokens_of_a_256_class_vocabulary() -> None:
    # NOTE: Gather takes int32 / int64 indices only, and K = 256 does not fit uint8: the index is cast
    classes = "{" + ", ".join(map(str, range(256))) + "}"
    table = "{" + ", ".join(str(round(0.01 * i - 3.0, 2)) for i in range(256 * 2)) + "}"
    text = HEADER + f"""
g (uint8[3, 4, 1] x) => (float[3, 4, 2] y) <uint8[1, 1, 256] c = {classes}, float[256, 2] w = {table}> {{
  e = Equal(x, c)
  h = Cast<to = 1>(e)
  y = MatMul(h, w)
}}
"""
    x = np.array([0, 255, 7, 128, 1, 254, 3, 9, 200, 17, 0, 66], np.uint8).reshape(3, 4, 1)
    model = assert_fires(OneHotMatMulToGather(), text, {"one_hot_lookups": 1}, feeds={"x": x})
    assert "Cast" in ops(model)


def test_declines_a_matrix_fed_at_run_time() -> None:
    text = _model("Equal(x, c)").replace("g (int32[2, 7, 1] x)", f"g (int32[2, 7, 1] x, float[{K}, {N}] w)")
    assert_declines(OneHotMatMulToGather(), text, "graph input")
