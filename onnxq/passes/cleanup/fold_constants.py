"""fold-constants: evaluate nodes whose inputs are all constant (onnxscript's constant folder).

Two guards on top of onnxscript 0.7.2 (both found by the onnx node-test conformance
run): ``CastLike{saturate=0}`` is left alone (its rule rewrites to a Cast without
``saturate``, which changes float8 results), and a rule that raises on one node
leaves that node unfolded instead of failing the pass.

Size limits keep folding from blowing a model up: a node is folded only when its
inputs have at most ``input_size_limit`` elements and its result at most
``output_size_limit``. Folded nodes become initializers; the dead producers are
left for eliminate-dead-code.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

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
        nodes_before = {id(n) for g in all_graphs(model) for n in g}
        folder = _GuardedFolder(
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
        modified = fingerprint(model) != before
        diagnostics = tuple(
            Diagnostic(f"not folded: {reason}", Severity.INFO, node=name) for name, reason in folder.skipped
        )
        replaced = len(nodes_before - {id(n) for g in all_graphs(model) for n in g})
        return PassResult(modified, {"nodes_replaced": replaced} if modified else {}, diagnostics)


class _GuardedFolder(_constant_folding.FoldConstantsPass):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skipped: list[tuple[str | None, str]] = []

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
