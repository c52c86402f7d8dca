"""A summary of a model for ``onnxq inspect``: signature, ops, parameters, subgraphs, external data.

Reads only metadata: external tensors are never loaded, so inspecting a
multi-GB model is cheap.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import onnx_ir as ir


def _dims(shape: ir.Shape | None) -> list[int | str | None] | None:
    if shape is None:
        return None
    # NOTE: a literal -1 (legacy exporters' dynamic axis) is dynamic, shown like an unnamed dim.
    return [(d if d >= 0 else None) if isinstance(d, int) else (d.value if d.value is not None else None)
            for d in shape]


def _value_info(value: ir.Value) -> dict[str, Any]:
    dims = _dims(value.shape)
    return {
        "name": value.name,
        "dtype": value.dtype.name.lower() if value.dtype is not None else None,
        "shape": dims,
        "dynamic_dims": [d if isinstance(d, str) else "?" for d in dims or [] if not isinstance(d, int)],
    }


def summarize(model: ir.Model) -> dict[str, Any]:
    """A JSON-ready description of the model."""
    ops: collections.Counter[str] = collections.Counter()
    subgraphs = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        ops[f"{node.domain}::{node.op_type}" if node.domain else node.op_type] += 1
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                subgraphs.append({"node": node.name, "op": node.op_type, "attribute": attr.name,
                                  "nodes": len(attr.as_graph())})
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.as_graphs():
                    subgraphs.append({"node": node.name, "op": node.op_type, "attribute": attr.name,
                                      "nodes": len(g)})
    params: dict[str, dict[str, int]] = {}
    external: dict[str, dict[str, int]] = {}
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            row = params.setdefault(tensor.dtype.name.lower(), {"count": 0, "bytes": 0, "tensors": 0})
            row["count"] += tensor.size
            row["bytes"] += tensor.nbytes
            row["tensors"] += 1
            if isinstance(tensor, ir.ExternalTensor):
                ext = external.setdefault(os.fspath(tensor.location), {"tensors": 0, "bytes": 0})
                ext["tensors"] += 1
                ext["bytes"] += tensor.nbytes
    initializer_names = set(model.graph.initializers)
    return {
        "ir_version": model.ir_version,
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x),
        "opsets": {(d or "ai.onnx"): v for d, v in sorted(model.opset_imports.items())},
        "inputs": [_value_info(v) for v in model.graph.inputs if v.name not in initializer_names],
        "outputs": [_value_info(v) for v in model.graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": {
            "count": sum(r["count"] for r in params.values()),
            "bytes": sum(r["bytes"] for r in params.values()),
            "by_dtype": dict(sorted(params.items())),
        },
        "subgraphs": subgraphs,
        "functions": [f"{f.domain}::{f.name}" for f in model.functions.values()],
        "external_data": external,
        "metadata": dict(model.metadata_props),
    }
