"""fold-constants: evaluate nodes whose inputs are all constant (onnxscript's constant folder).

Size limits keep folding from blowing a model up: a node is folded only when its
inputs have at most ``input_size_limit`` elements and its result at most
``output_size_limit``. Folded nodes become initializers; the dead producers are
left for eliminate-dead-code.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from onnxq.framework.base import Pass, PassResult
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

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = fingerprint(model)
        nodes_before = {id(n) for g in all_graphs(model) for n in g}
        folder = _constant_folding.FoldConstantsPass(
            shape_inference=False,
            input_size_limit=self.options.input_size_limit,
            output_size_limit=self.options.output_size_limit,
        )
        # NOTE: the folder logs each skipped large tensor at INFO/WARNING; keep the CLI quiet.
        log = logging.getLogger(_constant_folding.__name__)
        level = log.level
        log.setLevel(max(level, logging.ERROR))
        try:
            folder.call(model)
        finally:
            log.setLevel(level)
        modified = fingerprint(model) != before
        replaced = len(nodes_before - {id(n) for g in all_graphs(model) for n in g})
        return PassResult(modified, {"nodes_replaced": replaced} if modified else {})
