"""eliminate-common-subexpressions: merge nodes with the same op, inputs and attributes.

Written here rather than wrapping onnx_ir's CommonSubexpressionEliminationPass,
which handles only the main graph, crashes on TYPE_PROTO attributes, compares
floats by value (0.0 == -0.0), misses Bernoulli/Dropout as random, and trades a
node for an Identity when both values are graph outputs (so cleanup never
settles). Applied to every graph, subgraph and function. Never merged: random
ops, ops outside the onnx domains (custom ops and local functions may have
state), control flow, large tensor attributes, and a node whose merge would
need an Identity to keep graph input/output names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.errors import OptionError
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.cleanup._graphs import all_graphs

_RANDOM_OPS = frozenset(
    {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli", "Dropout"}
)
_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

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

        def __post_init__(self) -> None:
            if self.size_limit < 0:
                raise OptionError("pass 'eliminate-common-subexpressions': size_limit must be >= 0")

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
                elif _merge(graph, node, existing):
                    merged += 1
        return PassResult(merged > 0, {"nodes_merged": merged} if merged else {})

    def _key(self, node: ir.Node) -> Hashable | None:
        """What makes two nodes interchangeable, or None when the node must not be merged."""
        if node.domain not in _ONNX_DOMAINS or node.op_type in _RANDOM_OPS:
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
            elif attr.type in (ir.AttributeType.FLOAT, ir.AttributeType.FLOATS):
                # NOTE: by bits, so that 0.0 and -0.0 (and NaN payloads) stay apart.
                value = np.asarray(value, dtype=np.float32).tobytes()
            elif isinstance(value, list | tuple):
                value = tuple(value)
            attributes.append((name, attr.type, value))
        return (
            node.op_identifier(),
            len(node.outputs),
            tuple(id(v) if v is not None else None for v in node.inputs),
            tuple(attributes),
        )


def _merge(graph: ir.Graph | ir.Function, node: ir.Node, existing: ir.Node) -> bool:
    """Rewires ``node``'s uses to ``existing`` and removes it; False when that would rename an I/O."""
    outputs = list(graph.outputs)
    for old, new in zip(node.outputs, existing.outputs, strict=True):
        if old in outputs and (new in outputs or new.is_graph_input() or new.is_initializer()):
            return False
    for old, new in zip(node.outputs, existing.outputs, strict=True):
        if old in outputs:
            # NOTE: the surviving value takes the graph output's name, type and shape.
            new.name = old.name
            new.type = new.type or old.type
            new.shape = new.shape or old.shape
            for i, value in enumerate(outputs):
                if value is old:
                    graph.outputs[i] = new
        ir.convenience.replace_all_uses_with(old, new)
    graph.remove(node, safe=True)
    return True
