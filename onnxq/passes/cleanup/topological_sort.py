"""topological-sort: stable topological order of every graph, subgraph and function (onnx_ir)."""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.cleanup._graphs import all_graphs


class TopologicalSort(Pass):
    name: ClassVar[str] = "topological-sort"
    summary: ClassVar[str] = "Sort nodes topologically (stable), including subgraphs and functions"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        def order() -> list[list[int]]:
            return [[id(n) for n in g] for g in all_graphs(model)]

        before = order()
        # NOTE: Graph.sort() also sorts the graph's subgraphs; functions are sorted separately.
        model.graph.sort()
        for function in model.functions.values():
            function.sort()
        moved = sum(a != b for old, new in zip(before, order(), strict=True) for a, b in zip(old, new, strict=True))
        return PassResult(moved > 0, {"nodes_moved": moved} if moved else {})
