"""eliminate-no-ops, lift-constants and the materialized Reshape shape: fires and declines."""

from __future__ import annotations

import numpy as np

from onnxq import runtime
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import verify
from onnxq.passes.cleanup.infer_shapes import InferShapes
from onnxq.passes.fusion.collapse_reshapes import CollapseReshapes
from onnxq.passes.fusion.eliminate_no_ops import EliminateNoOps
from onnxq.passes.fusion.lift_constants import LiftConstants
from tests.conftest import parse
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 18]>'


def test_zero_bias_and_unit_scale_removed() -> None:
    text = HEADER + """
g (float[2, 4] x) => (float[2, 4] y) <float[4] zero = {0, 0, 0, 0}, float[1, 4] one = {1, 1, 1, 1}> {
  a = Add(zero, x)
  m = Mul(a, one)
  y = Relu(m)
}
"""
    # NOTE: the rewrite leaves no node of its own (the Identity it makes is removed at once).
    model = parse(text)
    InferShapes().run(model, PassContext())
    feeds = runtime.random_inputs(model)
    want = runtime.run(model, feeds)
    result = EliminateNoOps().run(model, PassContext())
    assert result.stats == {"no_ops_removed": 2}
    verify(model)
    assert ops(model) == ["Relu"]
    assert not runtime.compare(want, runtime.run(model, feeds))
    assert not EliminateNoOps().run(model, PassContext()).modified


def test_inference_no_ops_removed() -> None:
    # Dropout without training_mode, a Cast to float of a float, an Expand to its own shape, a Slice
    # over everything, a Conv and a Gemm with all-zero biases: each does nothing at inference.
    text = HEADER + """
g (float[1, 2, 4, 4] x) => (float[1, 3] y) <float[3, 2, 1, 1] w = {1, 2, 3, 4, 5, 6}, float[3] zb = {0, 0, 0},
   int64[4] shape = {1, 2, 4, 4}, int64[1] s0 = {0}, int64[1] s1 = {4}, int64[1] ax = {3}, int64[1] st = {1},
   float[3, 3] g = {1, 0, 0, 0, 1, 0, 0, 0, 1}, float[3] gb = {0, 0, 0}> {
  d = Dropout(x)
  c = Cast<to = 1>(d)
  e = Expand(c, shape)
  s = Slice(e, s0, s1, ax, st)
  v = Conv(s, w, zb)
  p = GlobalAveragePool(v)
  f = Flatten(p)
  y = Gemm(f, g, gb)
}
"""
    model = parse(text)
    InferShapes().run(model, PassContext())
    feeds = runtime.random_inputs(model)
    want = runtime.run(model, feeds)
    result = EliminateNoOps().run(model, PassContext())
    assert result.stats == {"dropouts_removed": 1, "casts_removed": 1, "expands_removed": 1, "slices_removed": 1,
                            "zero_biases_removed": 2}, result.stats
    verify(model)
    assert ops(model) == ["Conv", "GlobalAveragePool", "Flatten", "Gemm"]
    assert all(len(n.inputs) == 2 for n in model.graph if n.op_type in ("Conv", "Gemm"))
    assert not runtime.compare(want, runtime.run(model, feeds))
    assert not EliminateNoOps().run(model, PassContext()).modified


def test_training_dropout_and_used_mask_are_kept() -> None:
    text = HEADER + """
g (float[2, 4] x) => (float[2, 4] y, bool[2, 4] m) <bool t = {1}, float r = {0.5}> {
  a, m = Dropout(x)
  y = Dropout(a, r, t)
}
"""
    model = parse(text)
    InferShapes().run(model, PassContext())
    assert not EliminateNoOps().run(model, PassContext()).modified
    assert ops(model) == ["Dropout", "Dropout"]


def test_no_op_declines_when_the_constant_broadcasts() -> None:
    text = HEADER + """
g (float[4] x) => (float[2, 4] y) <float[2, 4] zero = {0, 0, 0, 0, 0, 0, 0, 0}> {
  y = Add(x, zero)
}
"""
    assert_declines(EliminateNoOps(), text, "the constant has a higher rank")


def test_lift_constants_in_graph_and_subgraph() -> None:
    text = HEADER + """
g (bool c, float[2] x) => (float[2] y) {
  k = Constant<value_floats = [1.0, 2.0]>()
  a = Add(x, k)
  y = If(c) <
    then_branch = t () => (float[2] o) { two = Constant<value_float = 2.0>()  o = Mul(a, two) },
    else_branch = e () => (float[2] o2) { o2 = Neg(a) }
  >
}
"""
    model = parse(text)
    feeds = {"c": np.array(True), "x": np.array([1.0, -1.0], np.float32)}
    want = runtime.run(model, feeds)
    result = LiftConstants().run(model, PassContext())
    assert result.stats == {"constants_lifted": 2}
    verify(model)
    assert "Constant" not in ops(model)
    assert not runtime.compare(want, runtime.run(model, feeds))
    assert not LiftConstants().run(model, PassContext()).modified


def test_reshape_shape_materialized_from_inferred_output() -> None:
    text = HEADER + """
g (float[N, 2, 3] x) => (float[N, 6] y) <int64[1] six = {6}, int64[1] zero = {0}, int64[1] one = {1}> {
  s = Shape(x)
  b = Slice(s, zero, one)
  shape = Concat<axis = 0>(b, six)
  y = Reshape(x, shape)
}
"""
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(2, 2, 3)}
    model = assert_fires(CollapseReshapes(), text, {"reshape_shapes_materialized": 1}, feeds=feeds)
    reshape = [n for n in model.graph if n.op_type == "Reshape"][0]
    assert reshape.inputs[1].const_value.numpy().tolist() == [-1, 6]
