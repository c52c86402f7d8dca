"""eliminate-dead-code: remove nodes, initializers and functions no graph output depends on.

Wraps onnx_ir's RemoveUnusedNodesPass / RemoveUnusedFunctionsPass and adds what
they lack: unused initializers inside subgraphs. The signature never changes.
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import fingerprint
from onnxq.passes.cleanup._graphs import node_count


class EliminateDeadCode(Pass):
    name: ClassVar[str] = "eliminate-dead-code"
    summary: ClassVar[str] = "Remove nodes, initializers and functions that no output uses"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = fingerprint(model)
        nodes = node_count(model)
        inits = sum(len(g.initializers) for g in model.graphs())
        functions = len(model.functions)
        RemoveUnusedNodesPass().call(model)
        for graph in list(model.graphs())[1:]:
            outputs = frozenset(graph.outputs)
            for init in list(graph.initializers.values()):
                if not init.uses() and init not in outputs and init not in graph.inputs:
                    assert init.name is not None
                    del graph.initializers[init.name]
        RemoveUnusedFunctionsPass().call(model)
        stats = {
            "nodes_removed": nodes - node_count(model),
            "initializers_removed": inits - sum(len(g.initializers) for g in model.graphs()),
            "functions_removed": functions - len(model.functions),
        }
        modified = fingerprint(model) != before
        return PassResult(modified, {k: v for k, v in stats.items() if v} if modified else {})
