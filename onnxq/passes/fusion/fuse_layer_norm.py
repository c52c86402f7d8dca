"""fuse-layer-norm: decomposed LayerNormalization -> ``LayerNormalization`` (opset 17+).

Uses onnxscript's shipped rules (``rules/fusion/_layer_norm``): ReduceMean / Sub /
(Pow 2 | Mul) / ReduceMean / Add eps / Sqrt / (Div | Reciprocal + Mul) / Mul scale, then
a following Add folded in as bias. Checks added because the shipped ones miss them: the
opset (LayerNormalization exists from 17; the shipped rule emits it at any opset), and
the shapes of scale and bias, which the shipped check never reads: the fused op needs
them shaped like the normalized (last) axis, while the decomposed form also accepts a
scale that broadcasts over other axes or raises the rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern
from onnxscript.rewriter.rules.fusion import _layer_norm as shipped

from onnxq.passes.fusion._rewrite import RewritePass, Rule

LAYER_NORM_OPSET = 17


def last_axis_vector(param: ir.Value, x: ir.Value) -> str | None:
    """None when ``param`` is a rank-1 tensor as long as x's last axis, else why not."""
    if param.shape is None or param.shape.rank() != 1:
        return f"'{param.name}' is not known to be rank 1"
    if x.shape is None or x.shape.rank() is None or x.shape.rank() < 1:
        return "input rank is unknown"
    if param.shape[0] != x.shape[-1]:
        return f"'{param.name}' length {param.shape[0]} differs from the normalized axis {x.shape[-1]}"
    return None


class _LayerNorm(shipped.LayerNormFusion):
    def pattern(self, op, x, scale, epsilon):  # type: ignore[no-untyped-def]
        # NOTE: the shipped pattern spells keepdims=1, so it misses ReduceMeans that rely on the default.
        mean = op.ReduceMean(x, [-1], _allow_other_attributes=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = pattern.OrValue([op.Mul(deviation, deviation), op.Pow(deviation, 2)])
        variance = op.ReduceMean(squared, [-1], _allow_other_attributes=True, _outputs=["variance"])
        std_dev = op.Sqrt(op.Add(variance, epsilon))
        normalized = pattern.OrValue([op.Mul(deviation, op.Reciprocal(std_dev)), op.Div(deviation, std_dev)])
        return op.Mul(normalized, scale)

    def check(  # type: ignore[override]
        self, context: Any, x: ir.Value, epsilon: ir.Value, scale: ir.Value, **kw: Any
    ) -> MatchResult:
        for reduced in (kw.get("mean"), kw.get("variance")):
            node = reduced.producer() if reduced is not None else None
            if node is None or node.attributes.get_int("keepdims", 1) != 1 or \
                    node.attributes.get_int("noop_with_empty_axes", 0):
                return MatchResult().fail("ReduceMean does not keep dims")
        result = super().check(context, x, epsilon, scale=scale)
        if not result:
            return result  # type: ignore[no-any-return]
        why = last_axis_vector(scale, x)
        return result.fail(f"scale {why}") if why else result  # type: ignore[no-any-return]


class _LayerNormBias(shipped.LayerNormBiasFusion):
    def pattern(self, op, x, scale, bias):  # type: ignore[no-untyped-def]
        # NOTE: LayerNormalization with 3 inputs (a bias already) must not match.
        return op.LayerNormalization(x, scale, _allow_other_attributes=True, _outputs=["normalized"]) + bias

    def check(  # type: ignore[override]
        self, context: Any, x: ir.Value, scale: ir.Value, bias: ir.Value, **kw: Any
    ) -> MatchResult:
        why = last_axis_vector(bias, x)
        return MatchResult().fail(f"bias {why}") if why else MatchResult()


class FuseLayerNorm(RewritePass):
    name: ClassVar[str] = "fuse-layer-norm"
    summary: ClassVar[str] = "Decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add) -> LayerNormalization"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (
            Rule(_LayerNorm.rule(name="fuse-layer-norm"), "layernorms_fused", min_opset=LAYER_NORM_OPSET,
                 commute=True, needs_ops=("ReduceMean", "Sqrt")),
            Rule(_LayerNormBias.rule(name="fuse-layer-norm:bias"), "layernorm_biases_fused",
                 min_opset=LAYER_NORM_OPSET, commute=True, needs_ops=("LayerNormalization",)),
        )
