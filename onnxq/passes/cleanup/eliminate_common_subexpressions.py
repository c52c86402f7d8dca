"""eliminate-common-subexpressions: merge nodes with the same op, inputs and attributes.

onnx_ir's CommonSubexpressionEliminationPass handles only the main graph; we
apply its per-graph routine to every subgraph and function too. Random ops are
never merged; control-flow nodes are not compared.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import CommonSubexpressionEliminationPass

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.cleanup._graphs import all_graphs, node_count


class EliminateCommonSubexpressions(Pass):
    name: ClassVar[str] = "eliminate-common-subexpressions"
    summary: ClassVar[str] = "Merge duplicate nodes (same op, inputs, attributes), in every graph"

    @dataclasses.dataclass(frozen=True)
    class Options:
        size_limit: int = dataclasses.field(
            default=10, metadata={"help": "largest tensor attribute (elements) compared"}
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        cse = CommonSubexpressionEliminationPass(size_limit=self.options.size_limit)
        before = node_count(model)
        modified = False
        for graph in list(all_graphs(model)):
            # NOTE: the per-graph routine works on any graph-like; it is private in onnx_ir 1.1.
            modified |= cse._eliminate_common_subexpression(graph)  # type: ignore[arg-type]
        merged = before - node_count(model)
        return PassResult(modified, {"nodes_merged": merged} if modified else {})
