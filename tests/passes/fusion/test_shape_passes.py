"""collapse-reshapes and cancel-transposes: fires (also inside a Loop body and a function) and declines."""

from __future__ import annotations

import numpy as np

from onnxq.passes.fusion.cancel_transposes import CancelTransposes
from onnxq.passes.fusion.collapse_reshapes import CollapseReshapes
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'


def test_reshape_chain_collapses() -> None:
    text = HEADER + """
g (float[2, 3, 4] x) => (float[6, 4] y, float[24] z) <int64[2] s = {6, 4}, int64[1] flat = {-1}, int64[1] ax = {0}> {
  f = Flatten<axis = 2>(x)
  y = Reshape(f, s)
  u = Unsqueeze(x, ax)
  q = Squeeze(u, ax)
  z = Reshape(q, flat)
}
"""
    model = assert_fires(CollapseReshapes(), text, {"reshapes_collapsed": 3})
    assert ops(model) == ["Reshape", "Reshape"]


def test_reshape_declines_zero_in_shape() -> None:
    text = HEADER + """
g (float[2, 3, 4] x) => (float[2, 12] y) <int64[2] s = {0, -1}, int64[2] s1 = {6, 4}> {
  r = Reshape(x, s1)
  y = Reshape(r, s)
}
"""
    assert_declines(CollapseReshapes(), text, "Reshape shape has 0 entries")


def test_transposes_cancel_and_merge() -> None:
    text = HEADER + """
g (float[2, 3, 4] x) => (float[2, 3, 4] y, float[4, 3, 2] z) {
  a = Transpose<perm = [2, 0, 1]>(x)
  b = Transpose<perm = [1, 2, 0]>(a)
  y = Relu(b)
  c = Transpose<perm = [1, 2, 0]>(x)
  z = Transpose<perm = [1, 0, 2]>(c)
}
"""
    model = assert_fires(CancelTransposes(), text, {"transposes_merged": 2})
    assert ops(model) == ["Relu", "Transpose"]


def test_transposes_decline_shared_first() -> None:
    text = HEADER + """
g (float[2, 3] x) => (float[2, 3] y, float[3, 2] a) {
  a = Transpose<perm = [1, 0]>(x)
  y = Transpose<perm = [1, 0]>(a)
}
"""
    assert_declines(CancelTransposes(), text, "Transpose output 'a' has 2 consumers")


def test_fires_inside_loop_body_and_function() -> None:
    text = """<ir_version: 10, opset_import: ["" : 18, "local" : 1]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) <int64 n = {2}, bool t = {1}> {
  y = Loop(n, t, x) <body = b (int64 i, bool c, float[2, 3] v) => (bool co, float[2, 3] vo) {
      co = Identity(c)
      a = Transpose<perm = [1, 0]>(v)
      vo = Transpose<perm = [1, 0]>(a)
    }>
  z = local.twice(x)
}
<domain: "local", opset_import: ["" : 18]>
twice (x) => (y) {
  a = Transpose<perm = [1, 0]>(x)
  y = Transpose<perm = [1, 0]>(a)
}
"""
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    model = assert_fires(CancelTransposes(), text, {"transposes_merged": 2}, feeds=feeds)
    assert "Transpose" not in ops(model)


def test_transpose_of_unit_axes_before_reshape_folds() -> None:
    text = HEADER + """
g (float[8, 1, 2, 4] x) => (float[8, 8] y, float[4, 16] z) <int64[2] s = {8, 8}, int64[2] s2 = {4, 16}> {
  t = Transpose<perm = [0, 2, 1, 3]>(x)
  y = Reshape(t, s)
  u = Transpose<perm = [1, 0, 2, 3]>(x)
  z = Reshape(u, s2)
}
"""
    model = assert_fires(CollapseReshapes(), text, {"reshapes_collapsed": 2})
    assert ops(model) == ["Reshape", "Reshape"]


def test_transpose_that_moves_data_is_kept() -> None:
    text = HEADER + """
g (float[8, 2, 4] x) => (float[64] y) <int64[1] s = {64}> {
  t = Transpose<perm = [1, 0, 2]>(x)
  y = Reshape(t, s)
}
"""
    assert_declines(CollapseReshapes(), text, "Transpose reorders axes larger than 1")
