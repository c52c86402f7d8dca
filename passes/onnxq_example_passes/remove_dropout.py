"""remove-dropout: remove Dropout nodes that run in inference mode.

In inference mode ``Dropout(x)`` returns ``x`` unchanged (its optional mask is
all ones), so exporters that leave Dropout in a graph only add a node that
runtimes must skip and that blocks pattern-based fusions. This pass rewires the
Dropout's consumers to its input and removes the node, in the main graph, in
every subgraph (If/Loop/Scan bodies) and in every local function.

A Dropout is removed only when that is exact:

* ``training_mode`` (opset 12+) is absent or a constant ``False``. A constant
  ``True`` always keeps the node; a non-constant one (e.g. a graph input) keeps
  it unless ``assume-inference=true`` says the model only ever runs in inference.
* The ``mask`` output is unused (and not a graph output).
* Opsets 1-6: the ``is_test`` attribute is 1.

A Dropout whose result is a graph output becomes an ``Identity`` so the graph
keeps its output name; ``remove-identity`` (in ``cleanup``) takes it from there.
Every Dropout left in place is reported as a warning diagnostic with the reason.

Examples::

    onnxq run model.onnx -p remove-dropout -o out.onnx
    onnxq run model.onnx -p "remove-dropout{assume-inference=true},cleanup" -o out.onnx
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir
from onnxq import Diagnostic, Pass, PassContext, PassResult, Severity


class RemoveDropout(Pass):
    # The name used in pipeline text (`-p remove-dropout`); kebab-case, unique among all passes.
    name: ClassVar[str] = "remove-dropout"
    # One line, shown by `onnxq passes`.
    summary: ClassVar[str] = "Remove inference-mode Dropout nodes (rewire consumers to the input)"

    # Options parse from pipeline text (`remove-dropout{assume-inference=true}`) and TOML;
    # the field type drives the conversion, metadata["help"] is shown by `onnxq passes`.
    @dataclasses.dataclass(frozen=True)
    class Options:
        assume_inference: bool = dataclasses.field(
            default=False,
            metadata={"help": "also remove Dropout whose training_mode is not a constant (treat it as false)"},
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        # A pass keeps no state on `self`: everything it needs is local to run().
        removed = 0
        to_identity = 0
        diagnostics: list[Diagnostic] = []
        for graph, opset in _graphs_with_opset(model):
            for node in list(graph):
                if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                    continue
                reason = self._keep_reason(node, opset)
                if reason is not None:
                    diagnostics.append(Diagnostic(f"Dropout kept: {reason}", Severity.WARNING, node.name))
                    continue
                if _remove(node, graph):
                    removed += 1
                else:
                    to_identity += 1
        changed = removed + to_identity
        stats = {"dropouts_removed": removed, "dropouts_to_identity": to_identity}
        # modified=False promises the model is untouched; a second run over the result must say so.
        return PassResult(
            changed > 0, {k: v for k, v in stats.items() if v} if changed else {}, tuple(diagnostics)
        )

    def _keep_reason(self, node: ir.Node, opset: int) -> str | None:
        """Why this Dropout must stay, or None when removing it is exact."""
        if not node.inputs or node.inputs[0] is None:
            return "it has no data input"
        if len(node.outputs) > 1:
            mask = node.outputs[1]
            if mask.uses() or mask.is_graph_output():
                return f"its mask output '{mask.name}' is used"
        if opset < 7:
            is_test = node.attributes.get("is_test")
            if is_test is None or is_test.as_int() == 0:
                return "opset < 7 Dropout runs in training mode (is_test=0)"
            return None
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is None:
            return None
        try:
            tensor = ir.convenience.get_const_tensor(training)
        except ValueError:
            tensor = None
        if tensor is None:
            if self.options.assume_inference:
                return None
            return f"training_mode '{training.name}' is not a constant (pass assume-inference=true to remove)"
        if bool(tensor.numpy().reshape(-1)[0]):
            return "training_mode is true"
        return None


def _graphs_with_opset(model: ir.Model) -> list[tuple[ir.Graph | ir.Function, int]]:
    """Every graph-like in the model with the ai.onnx opset its nodes use."""
    default = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    out: list[tuple[ir.Graph | ir.Function, int]] = []
    seen: set[int] = set()

    def add(graph: ir.Graph | ir.Function, opset: int) -> None:
        if id(graph) not in seen:
            seen.add(id(graph))
            out.append((graph, opset))

    for graph in model.graphs():  # main graph first, then every subgraph
        add(graph, default)
    for function in model.functions.values():
        opset = function.opset_imports.get("", function.opset_imports.get("ai.onnx", default))
        add(function, opset)
        for node in ir.traversal.RecursiveGraphIterator(function):
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    add(attr.as_graph(), opset)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.as_graphs():
                        add(sub, opset)
    return out


def _remove(node: ir.Node, graph: ir.Graph | ir.Function) -> bool:
    """Removes the Dropout (True), or turns it into an Identity when it feeds a graph output (False)."""
    source = node.inputs[0]
    result = node.outputs[0]
    assert source is not None
    if result.is_graph_output():
        # Keep the output's name: an Identity takes the Dropout's place.
        identity = ir.node("Identity", [source], name=node.name)
        graph.insert_before(node, identity)
        new = identity.outputs[0]
        new.shape, new.type = result.shape, result.type
        name = result.name
        result.replace_all_uses_with(new, replace_graph_outputs=True)
        result.name = None
        new.name = name
        graph.remove(node, safe=True)
        return False
    if source.shape is None:
        source.shape = result.shape
    if source.type is None:
        source.type = result.type
    result.replace_all_uses_with(source)
    graph.remove(node, safe=True)
    return True
