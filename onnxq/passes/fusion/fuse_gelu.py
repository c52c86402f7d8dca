"""fuse-gelu: decomposed GELU (Erf and tanh forms) -> one Gelu node chosen by the target.

- opset >= 20: ONNX ``Gelu`` (``approximate="tanh"`` for the tanh form), for every target;
- below 20, target ``ort-cpu`` (default): ``com.microsoft.Gelu`` (Erf form) or
  ``com.microsoft.FastGelu`` (tanh form), which onnxruntime's CPU provider implements;
- below 20, other targets decline: they have no such contrib op.

onnxscript ships these patterns only in ``ort_fusions`` (``gelu.py``, ``erfgelu.py``),
always emitting the com.microsoft ops and covering one association order of the Erf
form per rule; the patterns are rewritten here with the target choice, and both
``x / sqrt(2)`` and ``x * (1 / sqrt(2))``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.errors import OptionError
from onnxq.passes.fusion._rewrite import RewritePass, Rule, model_opset

GELU_OPSET = 20
#: Target names (onnxq's target profiles, plus "onnx" for plain standard ops).
TARGETS = ("ort-cpu", "ort-cuda", "tensorrt", "xnnpack", "nnapi", "qnn", "coreml", "onnx")
_CONTRIB_TARGETS = ("ort-cpu", "ort-cuda")
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class _GeluBase(RewriteRuleClassBase):
    tanh: ClassVar[bool] = False

    def __init__(self, target: str, opset: int, name: str) -> None:
        super().__init__(name=name)
        self.target = target
        self.opset = opset

    def check(self, context: Any, x: ir.Value, **_: Any) -> MatchResult:  # type: ignore[override]
        result = MatchResult()
        if x.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            return result.fail("input is not floating point")
        opset = self.opset
        if opset < GELU_OPSET and self.target not in _CONTRIB_TARGETS:
            return result.fail(f"opset {opset} < {GELU_OPSET} and target '{self.target}' has no contrib Gelu")
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> ir.Value:
        if self.opset >= GELU_OPSET:
            return op.Gelu(x, approximate="tanh") if self.tanh else op.Gelu(x)
        return op.FastGelu(x, _domain="com.microsoft") if self.tanh else op.Gelu(x, _domain="com.microsoft")


class _ErfGelu1(_GeluBase):
    """0.5 * (x * (Erf(x / sqrt2) + 1))."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return 0.5 * (x * (op.Erf(x / _SQRT_2) + 1.0))


class _ErfGelu2(_GeluBase):
    """x * (0.5 * (Erf(x / sqrt2) + 1))."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return x * (0.5 * (op.Erf(x / _SQRT_2) + 1.0))


class _ErfGelu3(_GeluBase):
    """(0.5 * x) * (Erf(x / sqrt2) + 1)."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return (x * 0.5) * (op.Erf(x / _SQRT_2) + 1.0)


class _ErfGelu4(_GeluBase):
    """0.5 * (x * (Erf(x * (1/sqrt2)) + 1))."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return 0.5 * (x * (op.Erf(x * (1.0 / _SQRT_2)) + 1.0))


class _ErfGelu5(_GeluBase):
    """x * (0.5 * (Erf(x * (1/sqrt2)) + 1))."""

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        return x * (0.5 * (op.Erf(x * (1.0 / _SQRT_2)) + 1.0))


class _TanhGelu(_GeluBase):
    """x * (0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))))."""

    tanh: ClassVar[bool] = True

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        inner = _SQRT_2_OVER_PI * (x + 0.044715 * op.Pow(x, 3.0))
        return x * (0.5 * (op.Tanh(inner) + 1.0))


class _TanhGelu2(_GeluBase):
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x)))."""

    tanh: ClassVar[bool] = True

    def pattern(self, op, x):  # type: ignore[no-untyped-def]
        inner = _SQRT_2_OVER_PI * (x + 0.044715 * op.Pow(x, 3.0))
        return (0.5 * x) * (op.Tanh(inner) + 1.0)


class FuseGelu(RewritePass):
    name: ClassVar[str] = "fuse-gelu"
    summary: ClassVar[str] = "Decomposed GELU (Erf/tanh) -> Gelu (opset 20+) or com.microsoft Gelu/FastGelu"

    @dataclasses.dataclass(frozen=True)
    class Options:
        target: str = dataclasses.field(
            default="ort-cpu", metadata={"help": f"target runtime ({', '.join(TARGETS)}): picks the Gelu op"}
        )

        def __post_init__(self) -> None:
            if self.target not in TARGETS:
                raise OptionError(f"pass 'fuse-gelu': unknown target '{self.target}' (known: {', '.join(TARGETS)})")

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        target, opset = self.options.target, model_opset(model)
        rules = []
        for index, cls in enumerate((_ErfGelu1, _ErfGelu2, _ErfGelu3, _ErfGelu4, _ErfGelu5, _TanhGelu, _TanhGelu2)):
            kind = "tanh" if cls.tanh else "erf"
            needs = ("Tanh", "Pow") if cls.tanh else ("Erf",)
            rules.append(Rule(cls.rule(target, opset, f"fuse-gelu:{kind}{index + 1}"), "gelus_fused", commute=True,
                              needs_ops=needs))
        return tuple(rules)
