"""Interop between onnx_ir and protobuf / onnx-graphsurgeon, for passes that need another representation.

In-place passes that build a new model (opset conversion, graphsurgeon scripts)
move its contents into the caller's model with :func:`replace_contents`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def replace_contents(model: ir.Model, new: ir.Model) -> None:
    """Moves ``new``'s graph, opsets, functions and IR version into ``model``."""
    # NOTE: opset imports belong to the graph in onnx_ir; they move with it.
    model.graph = new.graph
    model.functions.clear()
    model.functions.update(new.functions)
    if new.ir_version is not None:
        model.ir_version = new.ir_version


_T = TypeVar("_T")


def call_onnx(func: Callable[[onnx.ModelProto], _T], model: ir.Model) -> _T:
    """Calls an onnx C++ API (shape inference, version converter, checker) on the model's proto.

    Large weights are left out of the proto (and their shapes kept), so a model above protobuf's
    2 GB limit, or with lazy external weights, goes through without being read into memory. This
    is onnx_ir's own helper for its public ``ShapeInferencePass`` and ``CheckerPass``; onnx_ir has
    no public form of it, so it is reached here, in one place, for the passes that need their own
    inference options (infer-shapes, convert-opset, the quantizer's type reader).
    """
    return _c_api_utils.call_onnx_api(func, model)


def copy_model(model: ir.Model) -> ir.Model:
    """A copy of ``model`` to transform independently: new graph, nodes and values, shared weights.

    ``ir.Model.clone`` shares the tensors, so external weights stay lazy and keep the folder they
    live in. A round trip through protobuf (``ir.from_proto(ir.to_proto(m))``) instead keeps only
    the relative location, and the copy fails to load from another working directory. Passes give
    a weight a new tensor when they change it, never write into a shared one.
    """
    return model.clone()


def to_graphsurgeon(model: ir.Model) -> gs.Graph:
    """A gs.Graph of the model (reads all weights into memory: graphsurgeon has no lazy tensors)."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(ir.to_proto(model))


def from_graphsurgeon(graph: gs.Graph, *, like: ir.Model) -> ir.Model:
    """An onnx_ir model of a gs.Graph, keeping ``like``'s opsets where the graph has none."""
    import onnx_graphsurgeon as gs

    proto = gs.export_onnx(graph, do_type_check=False)
    if like.ir_version is not None:
        proto.ir_version = like.ir_version
    new = ir.serde.deserialize_model(proto)
    for domain, version in like.opset_imports.items():
        new.opset_imports.setdefault(domain, version)
    return new
