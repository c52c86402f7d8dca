"""lift-constants: Constant nodes become initializers (main graph and If/Loop/Scan bodies).

Wraps onnx_ir's ``LiftConstantsToInitializersPass`` with every Constant form lifted
(``value_ints``, ``value_float``... too) and no size floor, so the ``optimize`` preset ends
with weights and shape constants as initializers, as onnxslim and onnxscript's optimizer
do. A Constant that is a graph output stays (an initializer cannot be one without
renaming it); functions keep theirs (they cannot hold initializers).
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext


class LiftConstants(Pass):
    name: ClassVar[str] = "lift-constants"
    summary: ClassVar[str] = "Turn Constant nodes into initializers (graphs and subgraphs)"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = sum(1 for node in model.graph.all_nodes() if node.op_type == "Constant")
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0).call(model)
        lifted = before - sum(1 for node in model.graph.all_nodes() if node.op_type == "Constant")
        return PassResult(lifted > 0, {"constants_lifted": lifted} if lifted else {})
