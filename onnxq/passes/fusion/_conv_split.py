"""What the passes that rewrite one Conv into a form that fills onnxruntime's vector lanes share
(``polyphase-conv``, ``depthwise-sum-conv``): which Convs have weights they may rewrite, the loop
over the graph with its stat, ``explain``, and putting the new nodes in place of the old ones.

Hand-written on onnx_ir: these rewrites build weights and shape constants a pattern rule cannot.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir
from onnxscript.rewriter import RULE_NAME_TAG

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.fusion._rewrite import Miss, drop_unused_initializers


def constant_weights(node: ir.Node) -> str | None:
    """Why the Conv's weight and bias cannot be rewritten (not initializers a caller cannot feed, not
    float32), or None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return "not a Conv"
    w = node.inputs[1] if len(node.inputs) > 1 else None
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if node.inputs[0] is None or w is None or w.const_value is None or not w.is_initializer() or w.is_graph_input():
        return "the weight is not an initializer"
    if b is not None and (b.const_value is None or not b.is_initializer() or b.is_graph_input()):
        return "the bias is not an initializer"
    if w.const_value.dtype != ir.DataType.FLOAT:
        return "the weight is not float32"
    return None


class ConvSplit(Pass):
    """A pass that rewrites single Convs: :meth:`plan` says how (or why not), :meth:`rewrite` does it."""

    #: The stat counting rewritten Convs.
    stat: ClassVar[str] = "convs_split"

    @abc.abstractmethod
    def plan(self, node: ir.Node) -> Any:
        """How to rewrite ``node``, or a ``str``: why it is left alone."""

    @abc.abstractmethod
    def rewrite(self, graph: ir.Graph, conv: ir.Node, plan: Any) -> None:
        """Rewrites ``conv`` (through :meth:`replace`)."""

    def near_miss(self, reason: str) -> bool:
        """Whether a Conv left alone for ``reason`` is worth naming in :meth:`explain`."""
        return True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        rewritten = 0
        for node in list(graph):
            how = self.plan(node)
            if not isinstance(how, str):
                self.rewrite(graph, node, how)
                rewritten += 1
        return PassResult(rewritten > 0, {self.stat: rewritten} if rewritten else {})

    def explain(self, model: ir.Model) -> list[Miss]:
        """Why each Conv that nearly qualified was left alone."""
        return [Miss(self.name, self.name, node.name or str(node.outputs[0].name), how)
                for node in model.graph if node.op_type == "Conv"
                and isinstance(how := self.plan(node), str) and self.near_miss(how)]

    def replace(self, graph: ir.Graph, last: ir.Node, old_nodes: Sequence[ir.Node], created: Sequence[ir.Node],
                new_output: ir.Value, replaced: Sequence[ir.Value | None]) -> None:
        """``created`` (tagged with the pass's name) in place of ``old_nodes``, whose output ``last``
        computed and ``new_output`` now does; the ``replaced`` weights go when nothing reads them."""
        for node in created:
            node.metadata_props[RULE_NAME_TAG] = self.name
        ir.convenience.replace_nodes_and_values(graph, last, old_nodes, created, [last.outputs[0]], [new_output])
        drop_unused_initializers(graph, replaced)
