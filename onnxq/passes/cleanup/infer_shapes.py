"""infer-shapes: onnx shape/type inference merged into the IR.

Runs ``onnx.shape_inference`` through onnx_ir's C-API helper, which strips large
initializers first, so multi-GB models stay lazy. The merge is ours: onnx_ir's
ShapeInferencePass copies only element types, which turns sequence and optional
values into tensors (found by the conformance run); we copy the full type, and
leave dims onnx could not name (``unk__N``) anonymous instead of inventing names.
Inference failure leaves the model unchanged and is reported as a diagnostic.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from onnxq.errors import PassFailedError, first_line
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext


class InferShapes(Pass):
    name: ClassVar[str] = "infer-shapes"
    summary: ClassVar[str] = "Infer value shapes and types with onnx shape inference"

    @dataclasses.dataclass(frozen=True)
    class Options:
        strict: bool = dataclasses.field(default=False, metadata={"help": "fail on inference errors"})
        data_prop: bool = dataclasses.field(default=True, metadata={"help": "propagate shape values"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
            return onnx.shape_inference.infer_shapes(
                proto, check_type=True, strict_mode=self.options.strict, data_prop=self.options.data_prop
            )

        try:
            inferred = _c_api_utils.call_onnx_api(infer, model)
        except Exception as e:  # noqa: BLE001  # onnx raises InferenceError, RuntimeError, ...
            reason = first_line(e)
            if self.options.strict:
                raise PassFailedError(self.name, f"shape inference failed: {reason}") from e
            return PassResult(
                False, {}, (Diagnostic(f"shape inference failed, model unchanged: {reason}", Severity.WARNING),)
            )
        updated = _merge(model, ir.serde.deserialize_model(inferred))
        return PassResult(updated > 0, {"values_updated": updated} if updated else {})


def _merge(model: ir.Model, inferred: ir.Model) -> int:
    """Copies inferred types and shapes onto same-named values; returns how many changed."""
    updated = 0
    for graph, new_graph in zip(model.graphs(), inferred.graphs(), strict=False):
        new_values = ir.convenience.create_value_mapping(new_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            new = new_values.get(name)
            if new is None:
                continue
            changed = False
            if new.type is not None and new.type != value.type:
                value.type = new.type
                changed = True
            shape = _without_invented_names(new.shape)
            if shape is not None and shape != value.shape:
                value.shape = shape
                changed = True
            updated += changed
    return updated


def _without_invented_names(shape: ir.Shape | None) -> ir.Shape | None:
    """onnx names unknown dims ``unk__N``; they carry no meaning, so leave them anonymous."""
    if shape is None or not any(
        isinstance(d, ir.SymbolicDim) and str(d.value).startswith("unk__") for d in shape
    ):
        return shape
    return ir.Shape(
        [ir.SymbolicDim(None) if isinstance(d, ir.SymbolicDim) and str(d.value).startswith("unk__") else d
         for d in shape]
    )
