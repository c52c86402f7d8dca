"""infer-shapes: onnx shape/type inference merged into the IR.

Runs ``onnx.shape_inference`` through onnx_ir's C-API helper, which strips large
initializers first, so multi-GB models stay lazy. The merge is ours: onnx_ir's
ShapeInferencePass copies only element types, which turns sequence and optional
values into tensors (found by the conformance run); we copy the full type, and
leave dims onnx could not name (``unk__N``) anonymous instead of inventing names.
Inference failure leaves the model unchanged and is reported as a diagnostic.

Declared shapes are hints, not facts: exporters write wrong graph-output shapes and stale
``value_info`` (a real opset-12 export declares ``[1, seqlen]`` for an output that is
``[T, 1, C]``; onnxruntime only warns). Inference therefore starts from the inputs alone: every
declared shape but the graph inputs' is dropped before it runs, and a value keeps only the shape
inference derives (none when it derives none). A graph output keeps its declared symbolic names
where the inferred shape agrees, and its declaration when inference derives nothing (onnx's
checker requires a shape on graph outputs); rules that rely on a shape decline at graph outputs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx
import onnx_ir as ir

from onnxq.errors import PassFailedError, first_line
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext
from onnxq.ir.interop import call_onnx


class InferShapes(Pass):
    name: ClassVar[str] = "infer-shapes"
    summary: ClassVar[str] = "Infer value shapes and types with onnx shape inference"

    @dataclasses.dataclass(frozen=True)
    class Options:
        strict: bool = dataclasses.field(default=False, metadata={"help": "fail on inference errors"})
        data_prop: bool = dataclasses.field(default=True, metadata={"help": "propagate shape values"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
            _forget_declared_shapes(proto.graph)
            return onnx.shape_inference.infer_shapes(
                proto, check_type=True, strict_mode=self.options.strict, data_prop=self.options.data_prop
            )

        try:
            inferred = call_onnx(infer, model)
        except Exception as e:  # noqa: BLE001  # onnx raises InferenceError, RuntimeError, ...
            reason = first_line(e)
            if self.options.strict:
                raise PassFailedError(self.name, f"shape inference failed: {reason}") from e
            return PassResult(
                False, {}, (Diagnostic(f"shape inference failed, model unchanged: {reason}", Severity.WARNING),)
            )
        updated = _merge(model, ir.serde.deserialize_model(inferred))
        return PassResult(updated > 0, {"values_updated": updated} if updated else {})


def _forget_declared_shapes(graph: onnx.GraphProto) -> None:
    """Drops every declared shape but the inputs' (element types stay), in subgraphs too."""
    del graph.value_info[:]
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _forget_declared_shapes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _forget_declared_shapes(sub)


def _merge(model: ir.Model, inferred: ir.Model) -> int:
    """Copies inferred types and shapes onto same-named values; returns how many changed.

    A value that is neither a graph input nor an initializer loses a declared shape that inference
    did not derive (see the module docstring).
    """
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
            if value.is_graph_output():
                shape = _with_declared_names(shape, value.shape)
            if shape is None and (value.is_graph_input() or value.is_initializer() or value.is_graph_output()):
                # NOTE: a graph output keeps its declaration when inference derives nothing (the checker
                # requires a shape there); rewrites that rely on shapes decline at graph outputs.
                shape = value.shape
            if shape != value.shape:
                value.shape = shape
                changed = True
            updated += changed
    return updated


def _with_declared_names(shape: ir.Shape | None, declared: ir.Shape | None) -> ir.Shape | None:
    """``shape`` with the declared symbolic names on its anonymous dims, where the ranks agree."""
    if shape is None or declared is None or len(shape) != len(declared):
        return shape
    dims = [
        d2 if isinstance(d1, ir.SymbolicDim) and d1.value is None and isinstance(d2, ir.SymbolicDim) else d1
        for d1, d2 in zip(shape, declared, strict=True)
    ]
    return ir.Shape(dims)


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
