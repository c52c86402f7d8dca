"""fold-affine-into-conv: a scalar Mul or Add on a Conv's input folded into its weights or bias.

- ``Conv(Mul(x, s), W, B)``, s a scalar -> ``Conv(x, W*s, B)``: exact with any pads (a zero pad
  scales to zero);
- ``Conv(Add(x, c), W, B)``, c a scalar, no padding -> ``Conv(x, W, B + c * sum(W))``, the sum over
  each output channel's inputs and kernel. With padding the border outputs would see zeros
  where the input saw ``c``, so a padded Conv is declined.

Paddle's PP-LCNet backbones (the PP-OCR detector and recognizer) put a learnable affine,
``a * act(x) + b`` with scalar a and b, after every activation: 26 of them in each model, half
before a 1x1 Conv. onnxruntime runs each as two float passes over the feature map. Runs after
canonicalize-activations, so a written-out HardSwish's ``1/6`` fuses before it could be taken
here; the quantizer also runs it after lower-hardswish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, fresh_name, local_constant


def _scalar(value: ir.Value) -> np.ndarray | None:
    array = constant(value)
    return array.astype(np.float64).reshape(()) if array is not None and array.size == 1 else None


def _weight_check(context, w: ir.Value, conv_out: ir.Value) -> MatchResult:  # type: ignore[no-untyped-def]
    result = MatchResult()
    graph = context.graph_or_function
    if local_constant(w, graph) is None:
        return result.fail(f"Conv weight '{w.name}' is not a constant of this graph")
    conv = conv_out.producer()
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias is not None and local_constant(bias, graph) is None:
        return result.fail(f"Conv bias '{bias.name}' is not a constant of this graph")
    return result


class _ScaleInput(RewriteRuleClassBase):
    def pattern(self, op, x, s, w):  # type: ignore[no-untyped-def]
        return op.Conv(op.Mul(x, s), w, _allow_other_inputs=True, _outputs=["conv_out"])

    def check(self, context, x, s, w, conv_out):  # type: ignore[no-untyped-def]
        result = _weight_check(context, w, conv_out)
        if result and _scalar(s) is None:
            return result.fail(f"'{s.name}' is not a scalar constant")
        return result

    def rewrite(self, op, x, s, w, conv_out):  # type: ignore[no-untyped-def]
        conv = conv_out.producer()
        weight = constant(w)
        new_w = (weight.astype(np.float64) * _scalar(s)).astype(weight.dtype)  # type: ignore[union-attr]
        inputs = [x, op.initializer(ir.tensor(new_w), name=fresh_name(w.graph, f"{w.name}_scaled")), *conv.inputs[2:]]
        return op.Conv(*inputs, **conv.attributes)


class _ShiftInput(RewriteRuleClassBase):
    def pattern(self, op, x, c, w):  # type: ignore[no-untyped-def]
        return op.Conv(op.Add(x, c), w, _allow_other_inputs=True, _outputs=["conv_out"])

    def check(self, context, x, c, w, conv_out):  # type: ignore[no-untyped-def]
        result = _weight_check(context, w, conv_out)
        if not result:
            return result
        if _scalar(c) is None:
            return result.fail(f"'{c.name}' is not a scalar constant")
        conv = conv_out.producer()
        pads = conv.attributes.get_ints("pads", None)
        auto_pad = conv.attributes.get_string("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID") or (pads is not None and any(pads)):
            return result.fail("the Conv pads its input: border outputs would see zeros, not the added constant")
        return result

    def rewrite(self, op, x, c, w, conv_out):  # type: ignore[no-untyped-def]
        conv = conv_out.producer()
        weight = constant(w)
        shift = _scalar(c) * weight.astype(np.float64).reshape(weight.shape[0], -1).sum(axis=1)  # type: ignore[union-attr]
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        old = constant(bias) if bias is not None else np.zeros(weight.shape[0], weight.dtype)  # type: ignore[union-attr]
        new_b = (old.astype(np.float64) + shift).astype(weight.dtype)  # type: ignore[union-attr]
        base = bias.name if bias is not None else f"{w.name}_bias"
        return op.Conv(x, w, op.initializer(ir.tensor(new_b), name=fresh_name(w.graph, f"{base}_shifted")),
                       **conv.attributes)


class FoldAffineIntoConv(RewritePass):
    name: ClassVar[str] = "fold-affine-into-conv"
    summary: ClassVar[str] = "Scalar Mul / Add on a Conv's input folded into its weights / bias"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        stat = "affines_folded"
        return (
            # NOTE: the shift first: a*x + b before a Conv leaves Conv(Mul(x, a)) for the next rule.
            Rule(_ShiftInput.rule(name="fold-affine-into-conv:add"), stat, commute=True, needs_ops=("Conv", "Add")),
            Rule(_ScaleInput.rule(name="fold-affine-into-conv:mul"), stat, commute=True, needs_ops=("Conv", "Mul")),
        )
