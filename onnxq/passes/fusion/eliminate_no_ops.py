"""eliminate-no-ops: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` with constant tensors removed, and
the other ops that do nothing at inference: Dropout, a Cast to the type it has, an Expand to the
shape it has, a Slice over the whole tensor, an all-zero Conv / ConvTranspose / Gemm bias.

The last four are onnxscript's shipped rules (``CastIdentity``, ``ExpandIdentity``,
``collapse_slice_rule``, ``RemoveOptionalBiasFrom*``); Dropout is ours: the shipped
``dropout_inference_rule`` matches only the attribute form of ``training_mode`` (opset < 12),
while exports write it as an optional input, usually absent.

onnxscript's ``_no_op`` rules match only *scalar* constants (their TODO: "Support 1-D
constant tensors"); exporters often leave all-zero bias vectors (a Linear without bias,
an initial bias that training never moved). Here the constant may be any tensor of zeros
(ones) that does not broadcast ``x`` to a larger shape or change its type; x's shape must
be known.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _basic_rules, _collapse_slices, _remove_optional_bias

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, named


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


class DropoutIdentity(RewriteRuleClassBase):
    """``Dropout(x)`` at inference (no ``training_mode``, or a constant False; mask unused) -> ``x``."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return op.Dropout(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        node = out.producer()
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is not None:
            flag = constant(training)
            if flag is None or bool(np.asarray(flag).reshape(-1)[0]):
                return result.fail("training_mode is not a constant False")
        if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
            return result.fail("its mask output is used")
        return result

    def rewrite(self, op, x, out):  # type: ignore[no-untyped-def]
        return op.Identity(x)


class EliminateNoOps(RewritePass):
    name: ClassVar[str] = "eliminate-no-ops"
    summary: ClassVar[str] = ("Remove Add/Sub of zeros, Mul/Div by ones (tensors that do not broadcast), inference "
                              "Dropout, same-type Cast, same-shape Expand, whole-tensor Slice, all-zero biases")

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        shipped = [
            Rule(_basic_rules.CastIdentity.rule(name="eliminate-no-ops:cast"), "casts_removed", needs_ops=("Cast",)),
            Rule(_basic_rules.ExpandIdentity.rule(name="eliminate-no-ops:expand"), "expands_removed",
                 needs_ops=("Expand",)),
            Rule(named(copy.copy(_collapse_slices.collapse_slice_rule), "eliminate-no-ops:slice"), "slices_removed",
                 needs_ops=("Slice",)),
        ]
        for cls, op in ((_remove_optional_bias.RemoveOptionalBiasFromConv, "Conv"),
                        (_remove_optional_bias.RemoveOptionalBiasFromConvTranspose, "ConvTranspose"),
                        (_remove_optional_bias.RemoveOptionalBiasFromGemm, "Gemm")):
            shipped.append(Rule(cls().rule(name=f"eliminate-no-ops:zero-bias-{op.lower()}"), "zero_biases_removed",
                                needs_ops=(op,)))
        return (_rule("Add", 0.0, True), _rule("Sub", 0.0, False), _rule("Mul", 1.0, True), _rule("Div", 1.0, False),
                Rule(DropoutIdentity.rule(name="eliminate-no-ops:dropout"), "dropouts_removed",
                     needs_ops=("Dropout",)), *shipped)
