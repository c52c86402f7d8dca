"""infer-shapes: onnx shape/type inference merged into the IR (onnx_ir's ShapeInferencePass).

Large initializers are stripped before the call, so multi-GB models stay lazy.
Inference failure leaves the model unchanged and is reported as a diagnostic.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.messages.append(str(record.exc_info[1]).strip().splitlines()[0])


class InferShapes(Pass):
    name: ClassVar[str] = "infer-shapes"
    summary: ClassVar[str] = "Infer value shapes and types with onnx shape inference"

    @dataclasses.dataclass(frozen=True)
    class Options:
        strict: bool = dataclasses.field(default=False, metadata={"help": "fail on inference errors"})
        data_prop: bool = dataclasses.field(default=True, metadata={"help": "propagate shape values"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        inner = ShapeInferencePass(
            check_type=True, strict_mode=self.options.strict, data_prop=self.options.data_prop
        )
        capture = _Capture()
        log = logging.getLogger("onnx_ir.passes.common.shape_inference")
        log.addHandler(capture)
        try:
            modified = inner.call(model).modified
        finally:
            log.removeHandler(capture)
        diagnostics = tuple(
            Diagnostic(f"shape inference failed, model left unchanged: {m}", Severity.WARNING)
            for m in capture.messages
        )
        inferred = sum(1 for g in model.graphs() for n in g for v in n.outputs if v.shape is not None)
        return PassResult(modified, {"values_with_shape": inferred} if modified else {}, diagnostics)
