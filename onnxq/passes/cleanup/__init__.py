"""Cleanup passes: shape inference, folding, dead code, identities, CSE, sorting, opsets."""

from __future__ import annotations

from onnxq.framework.registry import Preset
from onnxq.passes.cleanup.convert_opset import ConvertOpset
from onnxq.passes.cleanup.eliminate_common_subexpressions import EliminateCommonSubexpressions
from onnxq.passes.cleanup.eliminate_dead_code import EliminateDeadCode
from onnxq.passes.cleanup.fold_constants import FoldConstants
from onnxq.passes.cleanup.infer_shapes import InferShapes
from onnxq.passes.cleanup.remove_identity import RemoveIdentity
from onnxq.passes.cleanup.topological_sort import TopologicalSort

PASSES = (
    InferShapes,
    FoldConstants,
    EliminateDeadCode,
    RemoveIdentity,
    EliminateCommonSubexpressions,
    TopologicalSort,
    ConvertOpset,
)

CLEANUP = Preset(
    name="cleanup",
    summary="Shape inference, constant folding, identity removal, CSE, dead code, sort; to a fixpoint",
    build=lambda: [
        InferShapes(),
        FoldConstants(),
        RemoveIdentity(),
        EliminateCommonSubexpressions(),
        EliminateDeadCode(),
        TopologicalSort(),
    ],
)

PRESETS = (CLEANUP,)

__all__ = [
    "CLEANUP",
    "PASSES",
    "PRESETS",
    "ConvertOpset",
    "EliminateCommonSubexpressions",
    "EliminateDeadCode",
    "FoldConstants",
    "InferShapes",
    "RemoveIdentity",
    "TopologicalSort",
]
