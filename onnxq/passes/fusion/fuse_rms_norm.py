"""fuse-rms-norm: decomposed RMS normalization -> ``RMSNormalization`` (opset 23+).

Uses onnxscript's shipped rules (``rules/fusion/_rms_normalization``): (Cast) / Pow 2 /
ReduceMean over the last axis / Add eps / Sqrt / Reciprocal / Mul x / (Cast) / Mul scale, in
either order of the last Mul. Checks added because the shipped one misses them: the opset
(RMSNormalization exists from 23; the shipped rule emits it at any opset), and the shape of
the scale, which the fused op needs shaped like the normalized (last) axis, while the
decomposed form also accepts one that broadcasts over other axes or raises the rank.

onnxruntime CPU fuses the decomposed form itself (SimplifiedLayerNormalization) at any opset,
so this pass does not lift the opset for it: it serves graphs at opset 23 and other targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern
from onnxscript.rewriter.rules.fusion import _rms_normalization as shipped

from onnxq.passes.fusion._rewrite import RewritePass, Rule
from onnxq.passes.fusion.fuse_layer_norm import last_axis_vector

RMS_NORM_OPSET = 23


class _RmsNorm(shipped.RmsNormFusion):
    def pattern(self, op, x, scale, epsilon, compute_dtype, target_dtype):  # type: ignore[no-untyped-def]
        # NOTE: the shipped pattern spells keepdims=1 and noop_with_empty_axes=0, so it misses
        # ReduceMeans that rely on the defaults; check() reads them instead.
        x = pattern.OrValue([op.Cast(x, to=compute_dtype), x])
        mean_square = op.ReduceMean(op.Pow(x, 2.0), [-1], _allow_other_attributes=True, _outputs=["mean"])
        normalized = op.Mul(x, op.Reciprocal(op.Sqrt(op.Add(mean_square, epsilon))))
        normalized = pattern.OrValue([op.Cast(normalized, to=target_dtype), normalized])
        return op.Mul(normalized, scale) if self._mul_order else op.Mul(scale, normalized)

    def check(self, op: Any, x: ir.Value, scale: ir.Value, epsilon: ir.Value,  # type: ignore[override]
              compute_dtype: Any, target_dtype: Any, **kw: Any) -> MatchResult:
        node = kw["mean"].producer() if kw.get("mean") is not None else None
        if node is None or node.attributes.get_int("keepdims", 1) != 1 or \
                node.attributes.get_int("noop_with_empty_axes", 0):
            return MatchResult().fail("ReduceMean does not keep dims")
        result = super().check(op, x, scale, epsilon, compute_dtype, target_dtype, **kw)
        if not result:
            return result  # type: ignore[no-any-return]
        why = last_axis_vector(scale, x)
        return result.fail(f"scale {why}") if why else result  # type: ignore[no-any-return]


class FuseRmsNorm(RewritePass):
    name: ClassVar[str] = "fuse-rms-norm"
    summary: ClassVar[str] = "Decomposed RMSNorm (Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul) -> RMSNormalization"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (
            Rule(_RmsNorm.rule("fuse-rms-norm", mul_order=True), "rmsnorms_fused", min_opset=RMS_NORM_OPSET,
                 needs_ops=("ReduceMean", "Sqrt", "Reciprocal")),
            Rule(_RmsNorm.rule("fuse-rms-norm:scale-first", mul_order=False), "rmsnorms_fused",
                 min_opset=RMS_NORM_OPSET, needs_ops=("ReduceMean", "Sqrt", "Reciprocal")),
        )
