"""convert-bfloat16: weights and compute in bfloat16, float32 islands where the type is not there.

bfloat16 keeps float32's exponent range (no overflow islands are needed, unlike float16) and 8
bits of mantissa; it is what GPUs (Ampere and later), TPUs and recent CPUs (AMX, AVX-512 BF16)
compute in with float32 accumulation, and what TensorRT and ONNX Runtime's CUDA provider run.
The conversion is onnxq's own (:mod:`onnxq.passes.precision._low_precision`): onnxruntime's
converter has no bfloat16. Islands, each named in the diagnostics with why:

- nodes whose ONNX schema has no bfloat16 form at the model's opset (below opset 13 most ops
  have none: ``quantize`` users convert the opset first with ``convert-opset``), nodes with
  subgraphs, ops whose output type an attribute fixes;
- ``block``: op types or node names the user keeps in float32;
- ``keep_norms``: normalizations and reductions (LayerNormalization, GroupNormalization,
  InstanceNormalization, BatchNormalization, ReduceMean / ReduceSum / ReduceSumSquare / ReduceL2,
  Softmax, LogSoftmax) in float32, for providers whose bfloat16 kernels accumulate in bfloat16.

Value types decide (missing ones are inferred first). Weights are converted lazily, one at a time when the model is written, so a model in external
data converts in the memory of its largest tensor. onnxruntime's CPU provider has almost no
bfloat16 kernels: the result is checked through :func:`~onnxq.passes.precision._low_precision.emulate`
(float32 arithmetic, every bfloat16 value rounded as stored), which ``onnxq convert-precision
--to bf16`` does.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir

from onnxq.framework.base import Diagnostic, Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.precision._low_precision import LowPrecisionOptions, already_low, convert, prepare

NORMS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization", "ReduceMean",
         "ReduceSum", "ReduceSumSquare", "ReduceL2", "Softmax", "LogSoftmax")


class ConvertBFloat16(Pass):
    name: ClassVar[str] = "convert-bfloat16"
    summary: ClassVar[str] = ("Weights and compute to bfloat16 (schema-driven, lazy weights), float32 islands "
                              "where bfloat16 is not there, Casts only at island borders")

    @dataclasses.dataclass(frozen=True)
    class Options(LowPrecisionOptions):
        keep_norms: bool = dataclasses.field(default=False, metadata={
            "help": "normalizations, reductions and softmax stay float32"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if (unchanged := already_low(model, ir.DataType.BFLOAT16)) is not None:
            return unchanged
        block_nodes, block_ops = prepare(model, ctx, self.options.block)
        if self.options.keep_norms:
            block_ops |= set(NORMS)
        done = convert(model, ir.DataType.BFLOAT16, keep_io_types=self.options.keep_io_types,
                       block_ops=block_ops, block_nodes=block_nodes)
        diagnostics = tuple(Diagnostic(why, node=node) for node, why in done.why_float.items())
        stats = {"nodes_bfloat16": done.low_nodes, "nodes_float32": len(done.float_nodes), "casts": done.casts,
                 "initializers_converted": done.initializers_converted}
        return PassResult(done.low_nodes > 0, {k: v for k, v in stats.items() if v}, diagnostics)
