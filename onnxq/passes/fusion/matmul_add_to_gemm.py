"""matmul-add-to-gemm: ``Add(MatMul(a, b), c)`` -> ``Gemm`` for rank-2 operands; ``reverse`` undoes it.

The forward direction uses onnxscript's shipped rules (``_matmul_add_to_gemm``, which
also fold a Transpose of either operand into transA/transB) with one check added: the
shipped check looks at the ranks of ``a`` and ``b`` only, so a bias of rank 3 (which
makes the Add's output rank 3) would become a Gemm with a rank-2 output. The reverse
(``reverse=true``, for targets that prefer MatMul) has no general shipped rule (the
shipped ``gemm_to_matmul_add`` only matches Reshape-Gemm-Reshape) and is written here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm as shipped

from onnxq.passes.fusion._rewrite import RewritePass, Rule, fresh_name, local_constant

_GEMM_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _with_bias_check(base: type[RewriteRuleClassBase]) -> type[RewriteRuleClassBase]:
    class Checked(base):  # type: ignore[misc, valid-type]
        def check(self, context: Any, input_a: ir.Value, input_b: ir.Value, input_c: ir.Value, **kw: Any) -> Any:
            result = super().check(context, input_a, input_b, **kw)
            if not result:
                return result
            if input_c.shape is None or input_c.shape.rank() is None or input_c.shape.rank() > 2:
                return result.fail(f"bias '{input_c.name}' is not known to have rank <= 2")
            if input_a.dtype not in _GEMM_TYPES:
                return result.fail(f"MatMul input '{input_a.name}' is not floating point")
            return result

    Checked.__name__ = base.__name__
    return Checked


class GemmToMatMulAdd(RewriteRuleClassBase):
    """``Gemm(a, b, c)`` with alpha = beta = 1 and transA = 0 -> ``Add(MatMul(a, b'), c)``."""

    def pattern(self, op, a, b):  # type: ignore[no-untyped-def]
        return op.Gemm(a, b, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, a, b, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        gemm = out.producer()
        if gemm.attributes.get_float("alpha", 1.0) != 1.0 or gemm.attributes.get_float("beta", 1.0) != 1.0:
            return result.fail("Gemm has alpha or beta != 1")
        if gemm.attributes.get_int("transA", 0):
            return result.fail("Gemm has transA = 1")
        return result

    def rewrite(self, op, a, b, out):  # type: ignore[no-untyped-def]
        gemm = out.producer()
        if gemm.attributes.get_int("transB", 0):
            weight = local_constant(b, b.graph) if b.graph is not None else None
            if weight is None:
                b = op.Transpose(b, perm=[1, 0])
            else:
                # NOTE: a constant weight is stored transposed rather than transposed at run time.
                b = op.initializer(ir.tensor(np.ascontiguousarray(weight.T)), name=fresh_name(b.graph, f"{b.name}_t"))
        product = op.MatMul(a, b)
        c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        return product if c is None else op.Add(product, c)


class MatMulAddToGemm(RewritePass):
    name: ClassVar[str] = "matmul-add-to-gemm"
    summary: ClassVar[str] = "Add(MatMul(a, b), c) -> Gemm for rank-2 operands (reverse=true: Gemm -> MatMul+Add)"

    @dataclasses.dataclass(frozen=True)
    class Options:
        reverse: bool = dataclasses.field(
            default=False, metadata={"help": "rewrite Gemm as MatMul+Add instead (targets that prefer MatMul)"}
        )

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        if self.options.reverse:
            return (Rule(GemmToMatMulAdd.rule(name="matmul-add-to-gemm:reverse"), "gemms_split"),)
        stat = "matmuls_to_gemm"
        return tuple(
            Rule(_with_bias_check(cls).rule(name=f"matmul-add-to-gemm:{suffix}"), stat, commute=True)
            for cls, suffix in (
                (shipped.TransABMatMulAddToGemm, "trans-ab"),
                (shipped.TransAMatMulAddToGemm, "trans-a"),
                (shipped.TransBMatMulAddToGemm, "trans-b"),
                (shipped.MatMulAddToGemm, "plain"),
            )
        )
