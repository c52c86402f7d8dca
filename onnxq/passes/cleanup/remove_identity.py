"""remove-identity: remove Identity nodes, rewiring their consumers (onnx_ir's IdentityEliminationPass).

An Identity that feeds a graph output is kept when removing it would rename a
graph input, an initializer, another graph's output or a value of an outer scope.
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.cleanup._graphs import all_graphs


class RemoveIdentity(Pass):
    name: ClassVar[str] = "remove-identity"
    summary: ClassVar[str] = "Remove Identity nodes and rewire their consumers"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        inner = IdentityEliminationPass()
        removed = 0
        for graph in list(all_graphs(model)):
            for node in list(graph):
                if node.op_type == "Identity" and node.domain == "" and _safe(node, graph):
                    # NOTE: private per-node routine; the public pass walks subgraphs without our guard.
                    removed += int(inner._try_eliminate_identity_node(node))
        return PassResult(removed > 0, {"identities_removed": removed} if removed else {})


def _safe(node: ir.Node, graph: ir.Graph | ir.Function) -> bool:
    if len(node.inputs) != 1 or node.inputs[0] is None or len(node.outputs) != 1:
        return False
    source, result = node.inputs[0], node.outputs[0]
    if not result.is_graph_output():
        return True
    # The source would take the output's name: it must be a plain value of this graph.
    producer = source.producer()
    return (
        producer is not None
        and producer.graph is node.graph
        and not source.is_graph_output()
        and not source.is_graph_input()
        and not source.is_initializer()
    )
