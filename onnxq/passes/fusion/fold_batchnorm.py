"""fold-batchnorm: fold inference BatchNormalization into the weights of the op before it.

Conv / ConvTranspose / Gemm use onnxscript's shipped rules (``_fuse_batchnorm``) with
three checks added, each found wrong in 0.7.2: the shipped check accepts a BatchNorm in
training mode (``training_mode=1`` or extra outputs), accepts weights that are initializers
of an *outer* graph when the pattern sits in an If/Loop body (the rewrite then defines a
second value of that name: invalid SSA), and accepts integer weights. MatMul (rank-2
output, where BatchNorm's channel axis is MatMul's last) and a standalone BatchNorm (no
foldable producer: becomes Mul + Add) have no shipped rule and are written here.

Declines when the producer's output has another consumer (reported by the matcher), or
when weights / BatchNorm parameters are not constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _fuse_batchnorm

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, fresh_name, local_constant

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _check_bn(context: Any, inbound_out: ir.Value, batchnorm_out: ir.Value) -> MatchResult:
    result = MatchResult()
    graph = context.graph_or_function
    bn = batchnorm_out.producer()
    inbound = inbound_out.producer()
    assert bn is not None and inbound is not None
    if len(bn.outputs) != 1 or bn.attributes.get_int("training_mode"):
        return result.fail("BatchNormalization is in training mode")
    weights = [v for v in inbound.inputs[1:3] if v is not None]
    for value in [*weights, *bn.inputs[1:]]:
        if local_constant(value, graph) is None:
            what = "weight" if value in weights else "BatchNormalization parameter"
            return result.fail(f"{inbound.op_type if value in weights else 'BatchNormalization'} {what} "
                               f"'{value.name if value else None}' is not a constant of this graph")
    if inbound.inputs[1] is not None and inbound.inputs[1].dtype not in _FLOATS:
        return result.fail(f"{inbound.op_type} weight is not floating point")
    return result


def _with_checks(base: type[RewriteRuleClassBase]) -> type[RewriteRuleClassBase]:
    """The shipped rule class with our checks run before its own."""

    class Checked(base):  # type: ignore[misc, valid-type]
        def check(self, context, x, inbound_out, batchnorm_out):  # type: ignore[no-untyped-def]
            own = _check_bn(context, inbound_out, batchnorm_out)
            if not own:
                return own
            return super().check(context, x, inbound_out, batchnorm_out)

    Checked.__name__ = base.__name__
    return Checked


_CONV = _with_checks(_fuse_batchnorm.FuseBatchNormIntoConv)
_CONV_TRANSPOSE = _with_checks(_fuse_batchnorm.FuseBatchNormIntoConvTranspose)
_GEMM = _with_checks(_fuse_batchnorm.FuseBatchNormIntoGemm)


def _bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with BN(y) = y * scale + shift, computed in float64 then cast back."""
    gamma, beta, mean, var = (constant(v).astype(np.float64) for v in bn.inputs[1:5])  # type: ignore[union-attr]
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


class FoldBatchNormIntoMatMul(RewriteRuleClassBase):
    """``BatchNormalization(MatMul(x, W))`` with a rank-2 output -> ``Add(MatMul(x, W * s), t)``."""

    def pattern(self, op, x, w):  # type: ignore[no-untyped-def]
        return op.BatchNormalization(
            op.MatMul(x, w, _outputs=["inbound_out"]), _allow_other_inputs=True, _outputs=["batchnorm_out"]
        )

    def check(self, context, x, w, inbound_out, batchnorm_out):  # type: ignore[no-untyped-def]
        result = _check_bn(context, inbound_out, batchnorm_out)
        if not result:
            return result
        weight = constant(w)
        if weight is None or weight.ndim != 2:
            return result.fail("MatMul weight is not a rank-2 constant")
        if inbound_out.shape is None or inbound_out.shape.rank() != 2:
            return result.fail("MatMul output is not known to be rank 2 (BatchNorm's channel axis is 1)")
        return result

    def rewrite(self, op, x, w, inbound_out, batchnorm_out):  # type: ignore[no-untyped-def]
        bn = batchnorm_out.producer()
        scale, shift = _bn_affine(bn)
        weight = constant(w)
        assert weight is not None
        graph = w.graph
        new_w = op.initializer(ir.tensor((weight * scale).astype(weight.dtype)), name=fresh_name(graph, f"{w.name}_bn"))
        new_b = op.initializer(ir.tensor(shift.astype(weight.dtype)), name=fresh_name(graph, f"{w.name}_bn_bias"))
        return op.Add(op.MatMul(x, new_w), new_b)


class DecomposeBatchNorm(RewriteRuleClassBase):
    """A BatchNormalization no producer absorbed -> ``Add(Mul(x, s), t)`` (s, t shaped [C, 1, ...])."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return op.BatchNormalization(x, _allow_other_inputs=True, _outputs=["batchnorm_out"])

    def check(self, context, x, batchnorm_out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        bn = batchnorm_out.producer()
        if len(bn.outputs) != 1 or bn.attributes.get_int("training_mode"):
            return result.fail("BatchNormalization is in training mode")
        for value in bn.inputs[1:]:
            if local_constant(value, context.graph_or_function) is None:
                return result.fail(f"BatchNormalization parameter '{value.name if value else None}' "
                                   "is not a constant of this graph")
        if x.shape is None or x.shape.rank() is None or x.shape.rank() < 2:
            return result.fail("BatchNormalization input rank is unknown")
        if x.dtype not in _FLOATS:
            return result.fail("BatchNormalization input is not floating point")
        return result

    def rewrite(self, op, x, batchnorm_out):  # type: ignore[no-untyped-def]
        bn = batchnorm_out.producer()
        scale, shift = _bn_affine(bn)
        dtype = constant(bn.inputs[1]).dtype  # type: ignore[union-attr]
        shape = (-1,) + (1,) * (x.shape.rank() - 2)
        graph = bn.inputs[1].graph
        base = bn.name or "batchnorm"
        s = op.initializer(ir.tensor(scale.reshape(shape).astype(dtype)), name=fresh_name(graph, f"{base}_scale"))
        t = op.initializer(ir.tensor(shift.reshape(shape).astype(dtype)), name=fresh_name(graph, f"{base}_shift"))
        return op.Add(op.Mul(x, s), t)


class FoldBatchNorm(RewritePass):
    name: ClassVar[str] = "fold-batchnorm"
    summary: ClassVar[str] = (
        "Fold BatchNormalization into Conv/ConvTranspose/Gemm/MatMul weights; a standalone one becomes Mul+Add"
    )

    @dataclasses.dataclass(frozen=True)
    class Options:
        decompose: bool = dataclasses.field(
            default=True, metadata={"help": "turn a BatchNormalization no producer absorbs into Mul+Add"}
        )

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        folded = "batchnorms_folded"
        rules = (
            Rule(_CONV.rule(name="fold-batchnorm:conv"), folded, needs_ops=("BatchNormalization",)),
            Rule(_CONV_TRANSPOSE.rule(name="fold-batchnorm:conv-transpose"), folded, needs_ops=("BatchNormalization",)),
            Rule(_GEMM.rule(name="fold-batchnorm:gemm"), folded, needs_ops=("BatchNormalization",)),
            Rule(FoldBatchNormIntoMatMul.rule(name="fold-batchnorm:matmul"), folded, needs_ops=("BatchNormalization",)),
        )
        if not self.options.decompose:
            return rules
        return (*rules, Rule(DecomposeBatchNorm.rule(name="fold-batchnorm:decompose"), "batchnorms_decomposed",
                                  needs_ops=("BatchNormalization",)))
