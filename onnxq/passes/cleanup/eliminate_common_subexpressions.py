"""eliminate-common-subexpressions: merge nodes with the same op, inputs and attributes.

onnx_ir's CommonSubexpressionEliminationPass handles only the main graph and
crashes on TYPE_PROTO attributes (e.g. ``Optional<type=...>``; found by the
conformance run), so the node key is ours; the rewiring reuses onnx_ir's helper.
Applied to every graph, subgraph and function. Random ops, control-flow nodes
and nodes with large tensor attributes are never merged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import common_subexpression_elimination as _cse

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.cleanup._graphs import all_graphs

_UNCOMPARABLE = frozenset(
    {
        ir.AttributeType.GRAPH,
        ir.AttributeType.GRAPHS,
        ir.AttributeType.TYPE_PROTO,
        ir.AttributeType.TYPE_PROTOS,
        ir.AttributeType.SPARSE_TENSOR,
        ir.AttributeType.SPARSE_TENSORS,
        ir.AttributeType.TENSORS,
    }
)


class EliminateCommonSubexpressions(Pass):
    name: ClassVar[str] = "eliminate-common-subexpressions"
    summary: ClassVar[str] = "Merge duplicate nodes (same op, inputs, attributes), in every graph"

    @dataclasses.dataclass(frozen=True)
    class Options:
        size_limit: int = dataclasses.field(
            default=10, metadata={"help": "largest tensor attribute (elements) compared"}
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        merged = 0
        for graph in list(all_graphs(model)):
            seen: dict[Hashable, ir.Node] = {}
            for node in list(graph):
                key = self._key(node)
                if key is None:
                    continue
                existing = seen.get(key)
                if existing is None:
                    seen[key] = node
                    continue
                _cse._remove_node_and_replace_values(
                    graph,  # type: ignore[arg-type]
                    remove_node=node,
                    remove_values=node.outputs,
                    new_values=existing.outputs,
                )
                merged += 1
        return PassResult(merged > 0, {"nodes_merged": merged} if merged else {})

    def _key(self, node: ir.Node) -> Hashable | None:
        """What makes two nodes interchangeable, or None when the node must not be merged."""
        if _cse._is_non_deterministic_op(node):
            return None
        attributes = []
        for name, attr in sorted(node.attributes.items()):
            if attr.is_ref() or attr.type in _UNCOMPARABLE:
                return None
            value = attr.value
            if attr.type == ir.AttributeType.TENSOR:
                if value.size > self.options.size_limit:
                    return None
                array = value.numpy()
                value = (array.shape, str(array.dtype), array.tobytes())
            elif isinstance(value, list | tuple):
                value = tuple(value)
            attributes.append((name, attr.type, value))
        return (
            node.op_identifier(),
            len(node.outputs),
            tuple(id(v) if v is not None else None for v in node.inputs),
            tuple(attributes),
        )
