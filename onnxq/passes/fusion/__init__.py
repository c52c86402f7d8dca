"""Fusion passes on onnxscript's rewriter, and the ``optimize`` preset (cleanup + fusions to a fixpoint).

Each pass is a set of pattern rules (shipped by onnxscript where they are right, ours
where none exists or the shipped one is wrong; each module says which). Every node a
rule creates carries the rule's name in ``metadata_props["pkg.onnxscript.rewriter.rule_name"]``,
and :meth:`RewritePass.explain` lists each rule's nearest misses with the reason.
"""

from __future__ import annotations

from onnxq.framework.base import Pass
from onnxq.framework.pipeline import Pipeline
from onnxq.framework.registry import Preset
from onnxq.passes.cleanup import CLEANUP, FoldConstants
from onnxq.passes.fusion._rewrite import Miss, RewritePass
from onnxq.passes.fusion.cancel_transposes import CancelTransposes
from onnxq.passes.fusion.canonicalize_activations import CanonicalizeActivations
from onnxq.passes.fusion.collapse_reshapes import CollapseReshapes
from onnxq.passes.fusion.depthwise_sum_conv import DepthwiseSumConv
from onnxq.passes.fusion.eliminate_no_ops import EliminateNoOps
from onnxq.passes.fusion.fold_affine_into_conv import FoldAffineIntoConv
from onnxq.passes.fusion.fold_batchnorm import FoldBatchNorm
from onnxq.passes.fusion.fold_conv_add_bias import FoldConvAddBias
from onnxq.passes.fusion.fold_mul_into_weights import FoldMulIntoWeights
from onnxq.passes.fusion.fold_pad_into_conv import FoldPadIntoConv
from onnxq.passes.fusion.fold_transpose_into_gemm import FoldTransposeIntoGemm
from onnxq.passes.fusion.fuse_gelu import TARGETS, FuseGelu
from onnxq.passes.fusion.fuse_layer_norm import FuseLayerNorm
from onnxq.passes.fusion.fuse_rms_norm import FuseRmsNorm
from onnxq.passes.fusion.lift_constants import LiftConstants
from onnxq.passes.fusion.lift_opset_for_fusions import LiftOpsetForFusions
from onnxq.passes.fusion.matmul_add_to_gemm import MatMulAddToGemm
from onnxq.passes.fusion.one_hot_matmul_to_gather import OneHotMatMulToGather
from onnxq.passes.fusion.polyphase_conv import PolyphaseConv

PASSES: tuple[type[Pass], ...] = (
    EliminateNoOps,
    FoldBatchNorm,
    FoldPadIntoConv,
    FoldConvAddBias,
    FoldMulIntoWeights,
    LiftOpsetForFusions,
    CanonicalizeActivations,
    FoldAffineIntoConv,
    FuseLayerNorm,
    FuseRmsNorm,
    FuseGelu,
    CancelTransposes,
    CollapseReshapes,
    FoldTransposeIntoGemm,
    OneHotMatMulToGather,
    MatMulAddToGemm,
    PolyphaseConv,
    DepthwiseSumConv,
    LiftConstants,
)
DEFAULT_TARGET = "ort-cpu"
OPTIMIZE_MAX_ITERATIONS = 10


def fusion_passes(target: str = DEFAULT_TARGET) -> list[Pass]:
    """The fusion passes in the order the ``optimize`` preset runs them."""
    return [FuseGelu(target=target) if cls is FuseGelu else cls() for cls in PASSES]


#: Folding limits of the optimize preset: weights are folded whole (a Transpose or Slice of a
#: weight), while results stay bounded so folding cannot blow the model up.
FOLD_INPUT_SIZE_LIMIT = 1 << 24
FOLD_OUTPUT_SIZE_LIMIT = 1 << 20


def optimize_passes(target: str = DEFAULT_TARGET) -> list[Pass]:
    """Cleanup (with folding limits for weights) then fusions: one round of the ``optimize`` preset."""
    cleanup = [
        FoldConstants(input_size_limit=FOLD_INPUT_SIZE_LIMIT, output_size_limit=FOLD_OUTPUT_SIZE_LIMIT)
        if isinstance(p, FoldConstants) else p
        for p in CLEANUP.build()
    ]
    return [*cleanup, *fusion_passes(target)]


def optimize_pipeline(target: str = DEFAULT_TARGET) -> Pipeline:
    """The ``optimize`` preset for ``target`` (``ort-cpu``, ``ort-cuda``, ``tensorrt``, ``onnx``).

    For the default target it prints as ``optimize``; for another one as its full
    pipeline text (``fixpoint(...,fuse-gelu{target=tensorrt},...)``), which parses back.
    """
    FuseGelu(target=target)  # NOTE: validates the target name (OptionError naming the known ones).
    label = "optimize" if target == DEFAULT_TARGET else None
    return Pipeline(
        optimize_passes(target),
        label=label,
        defaults=OPTIMIZE.defaults() if label else None,
        fixpoint=True,
        max_iterations=OPTIMIZE_MAX_ITERATIONS,
    )


OPTIMIZE = Preset(
    name="optimize",
    summary="cleanup + all fusions (BatchNorm, Pad, bias, Mul, activations, LayerNorm, RMSNorm, GELU, reshapes, "
    "transposes, Gemm, one-hot lookups, narrow convolutions on phases or as depthwise sums) to a fixpoint",
    build=optimize_passes,
    max_iterations=OPTIMIZE_MAX_ITERATIONS,
)
PRESETS = (OPTIMIZE,)

__all__ = [
    "DEFAULT_TARGET",
    "OPTIMIZE",
    "PASSES",
    "PRESETS",
    "TARGETS",
    "CancelTransposes",
    "CanonicalizeActivations",
    "CollapseReshapes",
    "DepthwiseSumConv",
    "EliminateNoOps",
    "FoldAffineIntoConv",
    "FoldBatchNorm",
    "FoldConvAddBias",
    "FoldMulIntoWeights",
    "FoldPadIntoConv",
    "FoldTransposeIntoGemm",
    "FuseGelu",
    "FuseLayerNorm",
    "FuseRmsNorm",
    "LiftConstants",
    "LiftOpsetForFusions",
    "MatMulAddToGemm",
    "Miss",
    "OneHotMatMulToGather",
    "PolyphaseConv",
    "RewritePass",
    "fusion_passes",
    "optimize_passes",
    "optimize_pipeline",
]
