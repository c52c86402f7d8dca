"""eliminate-no-ops: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` with constant tensors removed.

onnxscript's ``_no_op`` rules match only *scalar* constants (their TODO: "Support 1-D
constant tensors"); exporters often leave all-zero bias vectors (a Linear without bias,
an initial bias that training never moved). Here the constant may be any tensor of zeros
(ones) that does not broadcast ``x`` to a larger shape or change its type; x's shape must
be known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant


def _keeps_shape(x: ir.Value, values: np.ndarray) -> str | None:
    """None when broadcasting ``values`` against x leaves x's shape as it is, else why not."""
    if x.shape is None or x.shape.rank() is None:
        return "input shape is unknown"
    rank = x.shape.rank()
    if values.ndim > rank:
        return "the constant has a higher rank"
    for dim, size in zip(reversed(list(x.shape)), reversed(values.shape), strict=False):
        if size != 1 and dim != size:
            return "the constant broadcasts the input"
    return None


class _NoOp(RewriteRuleClassBase):
    op_type: ClassVar[str] = "Add"
    neutral: ClassVar[float] = 0.0

    def pattern(self, op, x, c):  # type: ignore[no-untyped-def]
        return getattr(op, self.op_type)(x, c)

    def check(self, context, x, c):  # type: ignore[no-untyped-def]
        result = MatchResult()
        values = constant(c)
        if values is None:
            return result.fail(f"'{c.name}' is not constant")
        if values.size == 0 or not np.all(values == self.neutral):
            return result.fail(f"'{c.name}' is not all {self.neutral:g}")
        if x.dtype is None or c.dtype != x.dtype:
            return result.fail("operand types differ")
        why = _keeps_shape(x, values)
        return result.fail(why) if why else result

    def rewrite(self, op, x, c):  # type: ignore[no-untyped-def]
        return op.Identity(x)


def _rule(op_type: str, neutral: float, commute: bool) -> Rule:
    cls: type[_NoOp] = type(f"{op_type}NoOp", (_NoOp,), {"op_type": op_type, "neutral": neutral})
    return Rule(cls.rule(name=f"eliminate-no-ops:{op_type.lower()}"), "no_ops_removed", commute=commute,
                needs_ops=(op_type,))


class EliminateNoOps(RewritePass):
    name: ClassVar[str] = "eliminate-no-ops"
    summary: ClassVar[str] = "Remove Add/Sub of zeros and Mul/Div by ones (tensors that do not broadcast)"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (_rule("Add", 0.0, True), _rule("Sub", 0.0, False), _rule("Mul", 1.0, True), _rule("Div", 1.0, False))
