"""canonicalize-activations: one canonical op per activation.

- ``Clip(x, 0)`` / ``Clip(x, 0, +inf)`` and ``Max(x, 0)`` -> ``Relu`` (written here: no shipped rule);
- ``Min``/``Max`` with constant scalars -> ``Clip``, and chains of Relu / Clip -> one Clip
  (so ``Relu`` then ``Clip(0, 6)`` stays one Clip(0, 6)): onnxscript's shipped
  ``_min_max_to_clip`` and ``_fuse_relus_clips`` rules; they emit Clip with min/max
  *inputs*, valid from opset 11, hence the gate;
- decomposed HardSigmoid / HardSwish (``Clip(x + 3, 0, 6) / 6`` [* x]) -> ``HardSigmoid`` /
  ``HardSwish``: the shipped ``_fuse_hardswish`` rules, HardSwish gated at opset 14.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _fuse_hardswish, _fuse_relus_clips, _min_max_to_clip

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant

#: Clip's min/max became inputs in opset 11.
CLIP_INPUTS_OPSET = 11
HARDSWISH_OPSET = 14


def _is_scalar(value: np.ndarray | None, want: float) -> bool:
    return value is not None and value.size == 1 and float(value.reshape(())) == want


class ClipToRelu(RewriteRuleClassBase):
    """``Clip(x, 0[, +inf])`` -> ``Relu(x)``."""

    def pattern(self, op, x, low):  # type: ignore[no-untyped-def]
        return op.Clip(x, low, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, low, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        if not _is_scalar(constant(low), 0.0):
            return result.fail("Clip min is not a constant 0")
        clip = out.producer()
        high = clip.inputs[2] if len(clip.inputs) > 2 else None
        if high is not None and not _is_scalar(constant(high), float("inf")):
            return result.fail("Clip has a finite or non-constant max")
        return result

    def rewrite(self, op, x, low, out):  # type: ignore[no-untyped-def]
        return op.Relu(x)


class MaxZeroToRelu(RewriteRuleClassBase):
    """``Max(x, 0)`` -> ``Relu(x)``."""

    def pattern(self, op, x, zero):  # type: ignore[no-untyped-def]
        return op.Max(x, zero, _outputs=["out"])

    def check(self, context, x, zero, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        if not _is_scalar(constant(zero), 0.0):
            return result.fail("Max operand is not a constant 0")
        if x.shape is None or out.shape is None or x.shape != out.shape:
            return result.fail("Max broadcasts (or shapes are unknown): Relu would change the shape")
        return result

    def rewrite(self, op, x, zero, out):  # type: ignore[no-untyped-def]
        return op.Relu(x)


class CanonicalizeActivations(RewritePass):
    name: ClassVar[str] = "canonicalize-activations"
    summary: ClassVar[str] = "Clip(0,inf)/Max(x,0) -> Relu, Min/Max -> Clip, Relu/Clip chains, HardSigmoid/HardSwish"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        clip = CLIP_INPUTS_OPSET
        rules = [
            Rule(_fuse_hardswish.HardSwishFusion.rule(name="canonicalize-activations:hardswish"),
                 "hardswish_fused", min_opset=HARDSWISH_OPSET, commute=True, needs_ops=("Clip",)),
            Rule(_fuse_hardswish.HardSigmoidFusion.rule(name="canonicalize-activations:hardsigmoid"),
                 "hardsigmoid_fused", min_opset=clip, commute=True, needs_ops=("Clip",)),
            Rule(_fuse_hardswish.HardSwishFusionFromHardSigmoid.rule(
                name="canonicalize-activations:hardsigmoid-mul"), "hardswish_fused", min_opset=HARDSWISH_OPSET,
                 commute=True, needs_ops=("HardSigmoid",)),
        ]
        min_max: tuple[type[RewriteRuleClassBase], ...] = (
            _min_max_to_clip.FuseMaxMinToClip, _min_max_to_clip.FuseMinMaxToClip,
            _min_max_to_clip.FuseSuccessiveMin, _min_max_to_clip.FuseSuccessiveMax)
        for cls in min_max:
            rules.append(Rule(cls.rule(name=f"canonicalize-activations:{cls.__name__}"), "min_max_to_clip",
                              min_opset=clip))
        rules.append(Rule(MaxZeroToRelu.rule(name="canonicalize-activations:max-to-relu"), "relus_made",
                          commute=True, min_opset=clip))
        rules.append(Rule(ClipToRelu.rule(name="canonicalize-activations:clip-to-relu"), "relus_made",
                          min_opset=clip))
        chains: tuple[type[RewriteRuleClassBase], ...] = (
            _fuse_relus_clips.FuseSuccessiveRelu, _fuse_relus_clips.FuseSuccessiveClip,
            _fuse_relus_clips.FuseSuccessiveClipRelu, _fuse_relus_clips.FuseSuccessiveReluClip)
        for cls in chains:
            rules.append(Rule(cls.rule(name=f"canonicalize-activations:{cls.__name__}"), "activations_merged",
                              min_opset=clip))
        return tuple(rules)
