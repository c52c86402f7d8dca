"""fold-pad-into-conv: a constant-zero Pad of spatial axes folded into Conv / AveragePool ``pads``.

Conv uses onnxscript's shipped rule (``_fuse_pad_into_conv``; a Conv with ``auto_pad``
declines). The shipped check reads Pad's ``pads`` *input*, which
exists only from opset 11 (older Pads carry an attribute and the check raises), so the
rules are gated at opset 11. AveragePool has no shipped rule; it reuses the shipped
Conv rule's check and rewrite, and is exact only with ``count_include_pad=1`` (padded
zeros are counted by both forms). MaxPool is left alone: a zero pad is not MaxPool's
implicit -inf padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult
from onnxscript.rewriter.rules.common import _fuse_pad_into_conv as shipped

from onnxq.passes.fusion._rewrite import RewritePass, Rule, named

#: Pad's pads became an input in opset 11.
PAD_INPUTS_OPSET = 11


class FoldPadIntoAveragePool(shipped.FuseConvPad):
    """``AveragePool<count_include_pad=1>(Pad(x))`` -> ``AveragePool(x)`` with larger pads."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return op.AveragePool(
            op.Pad(x, _allow_other_inputs=True, _outputs=["pad"]),
            _allow_other_attributes=True,
            _outputs=["conv"],
        )

    def check(self, context: Any, x: ir.Value, pad: ir.Value, conv: ir.Value) -> MatchResult:
        pool = conv.producer()
        assert pool is not None
        if not pool.attributes.get_int("count_include_pad", 0):
            return MatchResult().fail("AveragePool has count_include_pad=0: padded zeros would not be counted")
        return super().check(context, x, pad, conv)  # type: ignore[no-any-return]


class FoldPadIntoConv(RewritePass):
    name: ClassVar[str] = "fold-pad-into-conv"
    summary: ClassVar[str] = "Fold a constant-zero spatial Pad into Conv / AveragePool pads"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        opset = PAD_INPUTS_OPSET
        return (
            Rule(named(shipped.FuseConvPad.rule(), "fold-pad-into-conv:conv"), "pads_folded", min_opset=opset, needs_ops=("Pad",)),
            Rule(named(FoldPadIntoAveragePool.rule(), "fold-pad-into-conv:average-pool"), "pads_folded", min_opset=opset, needs_ops=("Pad",)),
        )
