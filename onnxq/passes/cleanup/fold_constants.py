"""fold-constants: evaluate nodes whose inputs are all constant (onnxscript's constant folder).

Two guards on top of onnxscript 0.7.2 (both found by the onnx node-test conformance
run): ``CastLike{saturate=0}`` is left alone (its rule rewrites to a Cast without
``saturate``, which changes float8 results), and a rule that raises on one node
leaves that node unfolded instead of failing the pass.

A third guard keeps every node the folder creates valid at the model's opset
(onnxscript's rules are written for recent opsets: ``Shape`` becomes a
``Constant{value_ints}``, an attribute that exists only from opset 12, and some
rules emit ``Squeeze``/``Unsqueeze`` with an axes input or ``Split{num_outputs}``).
Below opset 12 a ``Constant`` is rewritten to the ``value`` tensor attribute every
opset knows; any other new node is checked with ``onnx.checker.check_node`` at the
opsets of the graph or function it lands in, and a replacement holding a node the
checker refuses is dropped (the original node stays, with an INFO diagnostic).
Below IR version 4 the new initializers are also declared as graph inputs, as
that IR requires.

Size limits keep folding from blowing a model up: a node is folded only when its
inputs have at most ``input_size_limit`` elements and its result at most
``output_size_limit``. Folded nodes become initializers; the dead producers are
left for eliminate-dead-code.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from onnxq.errors import OptionError
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import fingerprint
from onnxq.passes.cleanup._graphs import all_graphs


class FoldConstants(Pass):
    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "Fold constant subgraphs into initializers, within size limits"

    @dataclasses.dataclass(frozen=True)
    class Options:
        input_size_limit: int = dataclasses.field(
            default=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            metadata={"help": "largest input (elements) a folded node may read"},
        )
        output_size_limit: int = dataclasses.field(
            default=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
            metadata={"help": "largest result (elements) folding may create"},
        )

        def __post_init__(self) -> None:
            if self.input_size_limit < 0 or self.output_size_limit < 0:
                raise OptionError("pass 'fold-constants': size limits must be >= 0")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = fingerprint(model)
        # NOTE: the list keeps removed nodes alive, so their ids are not reused by new nodes.
        alive = [n for g in all_graphs(model) for n in g]
        nodes_before = {id(n) for n in alive}
        folder = _GuardedFolder(
            nodes_before,
            shape_inference=False,
            input_size_limit=self.options.input_size_limit,
            output_size_limit=self.options.output_size_limit,
        )
        # NOTE: the folder logs each skipped large tensor at INFO/WARNING; keep the CLI quiet.
        output_slots = [(g, list(g.outputs)) for g in all_graphs(model)]
        log = logging.getLogger(_constant_folding.__name__)
        level = log.level
        log.setLevel(max(level, logging.ERROR))
        try:
            folder.call(model)
        finally:
            log.setLevel(level)
        _restore_shared_outputs(model, output_slots)
        _declare_initializers_as_inputs(model)
        modified = fingerprint(model) != before
        diagnostics = tuple(
            Diagnostic(f"not folded: {reason}", Severity.INFO, node=name) for name, reason in folder.skipped
        )
        replaced = len(nodes_before - {id(n) for g in all_graphs(model) for n in g})
        return PassResult(modified, {"nodes_replaced": replaced} if modified else {}, diagnostics)


class _GuardedFolder(_constant_folding.FoldConstantsPass):
    def __init__(self, existing: set[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skipped: list[tuple[str | None, str]] = []
        #: ids of the nodes in the model before folding (not the folder's creations).
        self.existing = existing

    def process_node(self, node: ir.Node, is_function: bool) -> _constant_folding.Replacement | None:
        if node.op_type == "CastLike" and node.domain == "":
            saturate = node.attributes.get("saturate")
            if saturate is not None and saturate.value == 0:
                return None
        try:
            return super().process_node(node, is_function=is_function)
        except Exception as e:  # noqa: BLE001  # an onnxscript rule bug must not fail the pass
            self.skipped.append((node.name, f"{node.op_type}: {type(e).__name__}: {e}"))
            return None

    def replace_node(
        self, node: ir.Node, replacement: _constant_folding.Replacement, root: ir.Graph | ir.Function
    ) -> None:
        opsets = dict(root.opset_imports) if isinstance(root, ir.Function) else dict(self._opset_imports)
        if not any(id(n) in self.existing for n in replacement.new_nodes):
            for new in replacement.new_nodes:
                _legalize_constant(new, opsets)
                reason = _invalid_at(new, opsets)
                if reason is not None:
                    # NOTE: a rule that builds new nodes leaves the graph untouched until this
                    # replacement is applied, so dropping it leaves the graph as it was.
                    self.skipped.append((node.name, f"{node.op_type}: rewrite not valid at this opset: {reason}"))
                    return
        # NOTE: otherwise the rule moved nodes of the model (an If inlined from its branch): they
        # were valid before, and the branch is already emptied, so the replacement must go in.
        super().replace_node(node, replacement, root)


def _restore_shared_outputs(model: ir.Model, before: list[tuple[ir.Graph | ir.Function, list[ir.Value]]]) -> None:
    """Where one value filled several output slots, make them share one value again.

    onnxscript's folder replaces one slot of a duplicated graph output and renames
    it (``y`` -> ``y_1``), which changes the signature.
    """
    # NOTE: folding may drop subgraphs (an If with a constant condition); those are skipped.
    live = {id(g) for g in all_graphs(model)}
    for graph, slots in before:
        if id(graph) not in live or len(graph.outputs) != len(slots):
            continue
        first: dict[int, int] = {}
        for i, value in enumerate(slots):
            j = first.setdefault(id(value), i)
            if j != i and graph.outputs[i] is not graph.outputs[j]:
                graph.outputs[i] = graph.outputs[j]


def _declare_initializers_as_inputs(model: ir.Model) -> None:
    """Below IR version 4 every initializer must also be a graph input (the checker says so)."""
    if model.ir_version >= 4:
        return
    inputs = {id(v) for v in model.graph.inputs}
    for value in model.graph.initializers.values():
        if id(value) not in inputs:
            model.graph.inputs.append(value)


# Constant's list/scalar attributes exist only from opset 12; ``value`` exists in every opset.
_CONSTANT_LIST_ATTRIBUTES_SINCE = 12


def _legalize_constant(node: ir.Node, opsets: dict[str, int]) -> None:
    """Rewrites ``Constant{value_int(s)|value_float(s)|value_string(s)}`` to ``value`` below opset 12."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attributes) != 1:
        return
    if _onnx_opset(opsets) >= _CONSTANT_LIST_ATTRIBUTES_SINCE:
        return
    name, attr = next(iter(node.attributes.items()))
    if attr.is_ref() or name == "value":
        return
    tensor: ir.TensorProtocol
    if name in ("value_int", "value_ints"):
        tensor = ir.tensor(np.asarray(attr.value, dtype=np.int64))
    elif name in ("value_float", "value_floats"):
        tensor = ir.tensor(np.asarray(attr.value, dtype=np.float32))
    elif name in ("value_string", "value_strings"):
        tensor = ir.StringTensor(np.asarray(attr.value, dtype=np.bytes_))
    else:
        return
    node.attributes.pop(name)
    node.attributes["value"] = ir.AttrTensor("value", tensor)


def _onnx_opset(opsets: dict[str, int]) -> int:
    return opsets.get("", opsets.get("ai.onnx", 1))


def _invalid_at(node: ir.Node, opsets: dict[str, int]) -> str | None:
    """Why the onnx checker refuses ``node`` at ``opsets``, or None when it accepts it."""
    context = onnx.checker.C.CheckerContext()
    context.ir_version = onnx.IR_VERSION
    context.opset_imports = opsets
    # NOTE: values the folder just made are still unnamed, and an empty name reads as "omitted";
    # name them for the check only.
    unnamed = [v for v in (*node.inputs, *node.outputs) if v is not None and not v.name]
    for i, value in enumerate(unnamed):
        value.name = f"_unnamed_{i}"
    try:
        proto = ir.serde.serialize_node(node)
        onnx.checker.check_node(proto, context)
    except onnx.checker.ValidationError as e:
        return str(e).strip().splitlines()[0]
    finally:
        for value in unnamed:
            value.name = None
    return None
