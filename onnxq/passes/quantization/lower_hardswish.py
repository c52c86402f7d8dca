"""lower-hardswish: ``HardSwish(x)`` -> ``x * Clip(x + 3, 0, 6) * (1/6)``, for targets with integer Add and Mul.

onnxruntime CPU has no integer HardSwish: in a QDQ graph every HardSwish runs in float, expanded
to HardSigmoid + Mul between a DequantizeLinear and a QuantizeLinear. On Paddle's PicoDet layout
detector (94 HardSwish after its convolutions; AMD EPYC, AVX2, 1 thread) those four float ops cost
64 ms per run where the integer convolutions saved 37 ms, so the INT8 model was barely faster
than float. Written as Add, Clip and Mul, the same function runs on integer kernels:
QLinearAdd, a Clip absorbed by the Q after it (its range is [0, 6]), QLinearMul; the final scalar
Mul folds into the weights of the convolutions that read it (``fold-affine-into-conv``) and is a
QLinearMul elsewhere. Measured on that detector: 145.7 -> 117.5 ms per run before the fold.

The rewrite is exact in real arithmetic (float rounding differs by about one ulp). It is a
lowering for a quantized target, not an optimization: float onnxruntime fuses HardSwish into
the convolution before it, so the quantizer runs this pass only on the graph it quantizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, fresh_name
from onnxq.passes.quantization._common import Selection

#: Clip with min/max inputs exists from opset 11; HardSwish itself from 14.
CLIP_INPUTS_OPSET = 11


class _LowerHardSwish(RewriteRuleClassBase):
    def __init__(self, name: str, selection: Selection) -> None:
        super().__init__(name)
        self.selection = selection

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return op.HardSwish(x, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, out: ir.Value) -> MatchResult:
        node = out.producer()
        if node is None or not self.selection.selects(node):
            return MatchResult().fail("not selected for quantization (stays float, fused into its Conv)")
        return MatchResult()

    def rewrite(self, op, x, out):  # type: ignore[no-untyped-def]
        graph = x.graph

        def scalar(value: float, base: str) -> ir.Value:
            return op.initializer(ir.tensor(np.array(value, np.float32)), name=fresh_name(graph, base))

        shifted = op.Add(x, scalar(3.0, "hardswish_three"))
        gate = op.Clip(shifted, scalar(0.0, "hardswish_zero"), scalar(6.0, "hardswish_six"))
        return op.Mul(op.Mul(x, gate), scalar(1.0 / 6.0, "hardswish_sixth"))


class _LowerHardSigmoid(RewriteRuleClassBase):
    """``HardSigmoid(x) = Clip(alpha * x + beta, 0, 1)``, its definition, for providers without it."""

    def __init__(self, name: str, selection: Selection) -> None:
        super().__init__(name)
        self.selection = selection

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return op.HardSigmoid(x, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, out: ir.Value) -> MatchResult:
        node = out.producer()
        if node is None or not self.selection.selects(node):
            return MatchResult().fail("not selected for quantization")
        return MatchResult()

    def rewrite(self, op, x, out):  # type: ignore[no-untyped-def]
        graph = x.graph
        node = out.producer()
        alpha = node.attributes.get_float("alpha", 0.2)
        beta = node.attributes.get_float("beta", 0.5)

        def scalar(value: float, base: str) -> ir.Value:
            return op.initializer(ir.tensor(np.array(value, np.float32)), name=fresh_name(graph, base))

        scaled = op.Add(op.Mul(x, scalar(alpha, "hardsigmoid_alpha")), scalar(beta, "hardsigmoid_beta"))
        return op.Clip(scaled, scalar(0.0, "hardsigmoid_zero"), scalar(1.0, "hardsigmoid_one"))


class LowerHardSwish(RewritePass):
    name: ClassVar[str] = "lower-hardswish"
    summary: ClassVar[str] = "HardSwish -> Add / Clip / Mul, which integer kernels run (for QDQ on ort-cpu)"

    @dataclasses.dataclass(frozen=True)
    class Options:
        include: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "only HardSwish nodes matching these names or regexes (':'-separated)"})
        exclude: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "leave HardSwish nodes matching these names or regexes as they are"})
        hardsigmoid: bool = dataclasses.field(
            default=False, metadata={"help": "also write HardSigmoid out as Clip(alpha * x + beta, 0, 1) "
                                             "(for providers without it: NNAPI)"})

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        selection = Selection(self.options.include, self.options.exclude)
        rules = [Rule(_LowerHardSwish.rule("lower-hardswish", selection), "hardswish_lowered",
                      min_opset=CLIP_INPUTS_OPSET, needs_ops=("HardSwish",))]
        if self.options.hardsigmoid:
            rules.append(Rule(_LowerHardSigmoid.rule("lower-hardsigmoid", selection), "hardsigmoid_lowered",
                              min_opset=CLIP_INPUTS_OPSET, needs_ops=("HardSigmoid",)))
        return tuple(rules)
