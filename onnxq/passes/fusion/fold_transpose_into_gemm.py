"""fold-transpose-into-gemm: ``Gemm(Transpose(a), Transpose(b))`` -> Gemm with transA / transB flipped.

onnxscript ships this only for MatMul + Add (``_matmul_add_to_gemm``), not for an existing
Gemm, so the rule is written here. A rank-2 Transpose is always ``perm=[1, 0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule


class _FoldTranspose(RewriteRuleClassBase):
    operand: ClassVar[int] = 0

    def pattern(self, op, t, other):  # type: ignore[no-untyped-def]
        transposed = op.Transpose(t, _allow_other_attributes=True, _outputs=["transposed"])
        args = (transposed, other) if self.operand == 0 else (other, transposed)
        return op.Gemm(*args, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, t, other, transposed, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        perm = transposed.producer().attributes.get_ints("perm", None)
        if perm is not None and list(perm) != [1, 0]:
            return result.fail(f"Transpose perm {list(perm)} is not [1, 0]")
        if perm is None and (t.shape is None or t.shape.rank() != 2):
            return result.fail("Transpose input is not known to be rank 2")
        return result

    def rewrite(self, op, t, other, transposed, out):  # type: ignore[no-untyped-def]
        gemm = out.producer()
        attributes = {k: v for k, v in gemm.attributes.items()}
        key = "transA" if self.operand == 0 else "transB"
        flipped = 1 - gemm.attributes.get_int(key, 0)
        attributes.pop(key, None)
        if flipped:
            attributes[key] = flipped
        inputs = [t, other] if self.operand == 0 else [other, t]
        inputs.extend(gemm.inputs[2:])
        return op.Gemm(*inputs, **attributes)


class _FoldTransposeA(_FoldTranspose):
    operand: ClassVar[int] = 0


class _FoldTransposeB(_FoldTranspose):
    operand: ClassVar[int] = 1


class FoldTransposeIntoGemm(RewritePass):
    name: ClassVar[str] = "fold-transpose-into-gemm"
    summary: ClassVar[str] = "Fold a Transpose of a Gemm operand into the Gemm's transA/transB"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (
            Rule(_FoldTransposeA.rule(name="fold-transpose-into-gemm:a"), "transposes_folded"),
            Rule(_FoldTransposeB.rule(name="fold-transpose-into-gemm:b"), "transposes_folded"),
        )
