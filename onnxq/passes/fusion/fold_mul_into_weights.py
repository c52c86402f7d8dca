"""fold-mul-into-weights: Mul / Div by a constant folded into the adjacent Conv or MatMul weights.

Handled (each exact up to float rounding of the new weights, computed in float64):

- ``Mul(Conv(x, W, B), s)`` / ``Div(..., s)``, s per-channel or scalar -> Conv(x, W*s, B*s);
- ``Mul(MatMul(x, W), s)`` / ``Div``, W a rank-2 constant, s broadcasting along the last axis
  only -> MatMul(x, W*s);
- ``MatMul(Mul(x, s), W)``, s a scalar or a vector along x's last axis -> MatMul(x, s[:, None]*W);
- a scalar Mul *before* a Conv is fold-affine-into-conv's (it runs after canonicalize-activations).

onnxscript's ``_fuse_conv_affine`` covers only a *scalar* Mul followed by a scalar Add
after a Conv that already has a bias, and names its initializers without checking for
clashes; the per-channel rules here (with fold-conv-add-bias for the Add) cover its cases,
so it is not used. A Div by a constant with a zero is declined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, fresh_name, local_constant
from onnxq.passes.fusion.fold_conv_add_bias import per_channel


def _factor(s: ir.Value, divide: bool) -> np.ndarray | None:
    values = constant(s)
    if values is None:
        return None
    wide = values.astype(np.float64)
    if divide:
        if np.any(wide == 0):
            return None
        return 1.0 / wide
    return wide


def _last_axis(values: np.ndarray, rank: int | None, size: int) -> np.ndarray | None:
    """``values`` as a [size] vector if it broadcasts over a rank-``rank`` tensor along the last axis only."""
    if rank is None or values.ndim > rank:
        return None
    if values.size == 1:
        return np.full(size, values.reshape(()))
    if any(d != 1 for d in values.shape[:-1]) or values.shape[-1] != size:
        return None
    return values.reshape(-1)


def _rank(value: ir.Value) -> int | None:
    return None if value.shape is None else value.shape.rank()


class _ScaleConv(RewriteRuleClassBase):
    divide: ClassVar[bool] = False

    def pattern(self, op, x, w, s):  # type: ignore[no-untyped-def]
        conv = op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv_out"])
        return op.Div(conv, s) if self.divide else op.Mul(conv, s)

    def check(self, context, x, w, s, conv_out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        graph = context.graph_or_function
        weight = local_constant(w, graph)
        if weight is None:
            return result.fail(f"Conv weight '{w.name}' is not a constant of this graph")
        conv = conv_out.producer()
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias is not None and local_constant(bias, graph) is None:
            return result.fail(f"Conv bias '{bias.name}' is not a constant of this graph")
        factor = _factor(s, self.divide)
        if factor is None:
            return result.fail(f"'{s.name}' is not a constant" + (" without zeros" if self.divide else ""))
        if per_channel(factor, weight.ndim, weight.shape[0]) is None:
            return result.fail(f"'{s.name}' of shape {list(factor.shape)} is not per-channel")
        return result

    def rewrite(self, op, x, w, s, conv_out):  # type: ignore[no-untyped-def]
        conv = conv_out.producer()
        weight = constant(w)
        factor = per_channel(_factor(s, self.divide), weight.ndim, weight.shape[0])  # type: ignore[arg-type, union-attr]
        shape = (-1,) + (1,) * (weight.ndim - 1)  # type: ignore[union-attr]
        new_w = (weight.astype(np.float64) * factor.reshape(shape)).astype(weight.dtype)  # type: ignore[union-attr]
        inputs = [x, op.initializer(ir.tensor(new_w), name=fresh_name(w.graph, f"{w.name}_scaled"))]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias is not None:
            old = constant(bias)
            new_b = (old.astype(np.float64) * factor).astype(old.dtype)  # type: ignore[union-attr]
            inputs.append(op.initializer(ir.tensor(new_b), name=fresh_name(w.graph, f"{bias.name}_scaled")))
        return op.Conv(*inputs, **conv.attributes)


class _DivConv(_ScaleConv):
    divide: ClassVar[bool] = True


class _ScaleMatMulOutput(RewriteRuleClassBase):
    divide: ClassVar[bool] = False

    def pattern(self, op, x, w, s):  # type: ignore[no-untyped-def]
        mm = op.MatMul(x, w, _outputs=["mm_out"])
        return op.Div(mm, s) if self.divide else op.Mul(mm, s)

    def check(self, context, x, w, s, mm_out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        weight = local_constant(w, context.graph_or_function)
        if weight is None or weight.ndim != 2:
            return result.fail(f"MatMul weight '{w.name}' is not a rank-2 constant of this graph")
        factor = _factor(s, self.divide)
        if factor is None:
            return result.fail(f"'{s.name}' is not a constant" + (" without zeros" if self.divide else ""))
        if _last_axis(factor, _rank(mm_out), weight.shape[1]) is None:
            return result.fail(f"'{s.name}' of shape {list(factor.shape)} does not scale only the last axis")
        return result

    def rewrite(self, op, x, w, s, mm_out):  # type: ignore[no-untyped-def]
        weight = constant(w)
        factor = _last_axis(_factor(s, self.divide), _rank(mm_out), weight.shape[1])  # type: ignore[arg-type, union-attr]
        new_w = (weight.astype(np.float64) * factor[None, :]).astype(weight.dtype)  # type: ignore[union-attr, index]
        return op.MatMul(x, op.initializer(ir.tensor(new_w), name=fresh_name(w.graph, f"{w.name}_scaled")))


class _DivMatMulOutput(_ScaleMatMulOutput):
    divide: ClassVar[bool] = True


class _ScaleMatMulInput(RewriteRuleClassBase):
    def pattern(self, op, x, s, w):  # type: ignore[no-untyped-def]
        return op.MatMul(op.Mul(x, s), w)

    def check(self, context, x, s, w):  # type: ignore[no-untyped-def]
        result = MatchResult()
        weight = local_constant(w, context.graph_or_function)
        if weight is None or weight.ndim != 2:
            return result.fail(f"MatMul weight '{w.name}' is not a rank-2 constant of this graph")
        factor = _factor(s, False)
        if factor is None:
            return result.fail(f"'{s.name}' is not a constant")
        if _last_axis(factor, _rank(x), weight.shape[0]) is None:
            return result.fail(f"'{s.name}' of shape {list(factor.shape)} does not scale only the last axis")
        return result

    def rewrite(self, op, x, s, w):  # type: ignore[no-untyped-def]
        weight = constant(w)
        factor = _last_axis(_factor(s, False), _rank(x), weight.shape[0])  # type: ignore[arg-type, union-attr]
        new_w = (weight.astype(np.float64) * factor[:, None]).astype(weight.dtype)  # type: ignore[union-attr, index]
        return op.MatMul(x, op.initializer(ir.tensor(new_w), name=fresh_name(w.graph, f"{w.name}_scaled")))


class FoldMulIntoWeights(RewritePass):
    name: ClassVar[str] = "fold-mul-into-weights"
    summary: ClassVar[str] = "Fold Mul/Div by constants into adjacent Conv/MatMul weights"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        stat = "muls_folded"
        return (
            Rule(_ScaleConv.rule(name="fold-mul-into-weights:conv-mul"), stat, commute=True),
            Rule(_DivConv.rule(name="fold-mul-into-weights:conv-div"), stat),
            Rule(_ScaleMatMulOutput.rule(name="fold-mul-into-weights:matmul-mul"), stat, commute=True),
            Rule(_DivMatMulOutput.rule(name="fold-mul-into-weights:matmul-div"), stat),
            Rule(_ScaleMatMulInput.rule(name="fold-mul-into-weights:mul-matmul"), stat, commute=True),
        )
