"""one-hot-matmul-to-gather: a one-hot encoding multiplied by a constant matrix is a row lookup.

``MatMul(Cast(Equal(x, arange(K)), float), W)`` with ``x`` an integer tensor whose last axis is 1
and ``W`` a constant ``[K, N]``: each row of the one-hot picks one row of ``W``, or none where
``x`` is outside ``[0, K)``. jax2tf writes ``jax.nn.one_hot`` this way in front of an embedding
(Google's Magika: 2048 byte tokens, ``K = 257``). The one-hot costs a ``[2048, 257]`` compare, a
cast and a matrix product, and under static INT8 a QuantizeLinear of the one-hot too (0.53 of
Magika's 3.4 ms per run, 1 thread). Rewritten: ``Gather(W', Where(0 <= i < K, i, K))`` with
``i = Squeeze(x, -1)`` and ``W'`` = ``W`` with a row of zeros appended for the out-of-range
tokens; exact (the same rows, no arithmetic on them).

Ours: onnxscript ships no such rule. The ONNX ``OneHot`` operator's form (negative indices wrap)
is not matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, fresh_name

#: GreaterOrEqual exists from opset 12; Squeeze takes its axes as an input from 13.
MIN_OPSET = 13
INTEGER_TYPES = frozenset({ir.DataType.INT32, ir.DataType.INT64, ir.DataType.INT16, ir.DataType.INT8,
                           ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32})


class _OneHotMatMul(RewriteRuleClassBase):
    def pattern(self, op, x, classes, w):  # type: ignore[no-untyped-def]
        hot = op.Cast(op.Equal(x, classes, _outputs=["hot"]), to=ir.DataType.FLOAT)
        return op.MatMul(hot, w, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, classes: ir.Value, w: ir.Value, hot: ir.Value,
              out: ir.Value) -> MatchResult:
        result = MatchResult()
        table = classes.const_value
        if table is None:
            return result.fail("the classes compared with are not a constant")
        values = table.numpy()
        if values.ndim < 1 or values.dtype.kind not in "iu" or not np.array_equal(
                values.reshape(-1), np.arange(values.size)) or any(d != 1 for d in values.shape[:-1]):
            return result.fail("the classes are not 0, 1, ..., K-1 along the last axis")
        if w.const_value is None or len(w.const_value.shape) != 2 or w.const_value.dtype != ir.DataType.FLOAT:
            return result.fail("the matrix is not a constant float [K, N]")
        if w.is_graph_input() or classes.is_graph_input():
            return result.fail("the matrix or the classes can be fed at run time (a graph input)")
        if w.const_value.shape[0] != values.size:
            return result.fail(f"the matrix has {w.const_value.shape[0]} rows for {values.size} classes")
        if x.dtype not in INTEGER_TYPES:
            return result.fail("the compared tensor is not an integer tensor")
        if x.shape is None or len(x.shape) < max(values.ndim, 2) or x.shape[-1] != 1:
            return result.fail("the compared tensor's last axis is not 1 (or its rank is below the classes')")
        return result

    def rewrite(self, op, x, classes, w, hot, out):  # type: ignore[no-untyped-def]
        graph = x.graph
        size = int(classes.const_value.size)
        table = np.asarray(w.const_value.numpy(), np.float32)
        padded = np.concatenate([table, np.zeros((1, table.shape[1]), np.float32)])

        def constant(array: np.ndarray, base: str) -> ir.Value:
            return op.initializer(ir.tensor(array), name=fresh_name(graph, base))

        index = op.Squeeze(x, constant(np.array([-1], np.int64), "one_hot_axis"))
        if x.dtype != ir.DataType.INT64:
            # NOTE: Gather takes int32 / int64 indices only, and K may not fit the tokens' type
            # (a byte vocabulary of 256 in uint8)
            index = op.Cast(index, to=ir.DataType.INT64)
        low = constant(np.array(0, np.int64), "one_hot_first")
        high = constant(np.array(size, np.int64), "one_hot_classes")
        inside = op.And(op.GreaterOrEqual(index, low), op.Less(index, high))
        return op.Gather(constant(padded, "one_hot_rows"), op.Where(inside, index, high), axis=0)


class OneHotMatMulToGather(RewritePass):
    name: ClassVar[str] = "one-hot-matmul-to-gather"
    summary: ClassVar[str] = "One-hot (Equal with 0..K-1, Cast) times a constant matrix -> Gather of its rows"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (Rule(_OneHotMatMul.rule("one-hot-matmul-to-gather"), "one_hot_lookups", min_opset=MIN_OPSET,
                     commute=True, needs_ops=("Equal", "MatMul")),)
