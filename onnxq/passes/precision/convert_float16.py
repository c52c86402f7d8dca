"""convert-float16: weights and compute in float16, with float32 islands where fp16 would break.

The conversion is onnxq's own (:mod:`onnxq.passes.precision._low_precision`, shared with
``convert-bfloat16``): schema-driven, on the onnx_ir model, weights converted lazily one at a time
when the model is written, so a model in external data converts in the memory of its largest
tensor (onnxruntime's ``convert_float_to_float16``, used before, works on a whole ``ModelProto``).
What decides the islands:

- **overflow**: a tensor whose calibrated range reaches beyond ``max_abs`` (default half of fp16's
  65504, room for what the calibration samples did not show) stays float32 with its producer and
  its readers; the
  :class:`~onnxq.calibration.ranges.Ranges` come from the context when ``convert-precision`` is
  given samples, and each island is named in the stats;
- **ops**: onnxruntime's own block list (ops without fp16 kernels anywhere: TopK, NonMaxSuppression,
  Range, CumSum, Min, Max, the ai.onnx.ml ops...) plus ``block`` (op types or node names, the user's);
- **borders**: one Cast per value and type where the two worlds meet, none elsewhere; graph inputs
  and outputs keep their float32 type unless ``keep_io_types`` is off.

Follows onnxruntime's converter (and NVIDIA ModelOpt AutoCast's use of calibrated ranges).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx_ir as ir

from onnxq.framework.base import Diagnostic, Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.precision._low_precision import LowPrecisionOptions, already_low, convert, prepare

FP16_MAX = 65504.0


def _overflowing(model: ir.Model, ctx: PassContext, max_abs: float) -> dict[str, tuple[str, float]]:
    """Node name -> (tensor, |range|) for producers of tensors whose calibrated range exceeds ``max_abs``."""
    from onnxq.calibration.ranges import Ranges

    ranges = next((r for k, r in ctx.resources.items() if issubclass(k, Ranges)), None)
    if ranges is None:
        return {}
    found: dict[str, tuple[str, float]] = {}
    for node in model.graph:
        for out in node.outputs:
            if out.name and out.name in ranges:
                r = ranges[out.name]
                peak = max(abs(float(r.min)), abs(float(r.max)))
                if peak > max_abs and node.name:
                    found.setdefault(node.name, (out.name, peak))
    return found


class ConvertFloat16(Pass):
    name: ClassVar[str] = "convert-float16"
    summary: ClassVar[str] = ("Weights and compute to float16 (lazy weights), float32 islands for "
                              "calibrated overflow and a block list, Casts only at island borders")

    @dataclasses.dataclass(frozen=True)
    class Options(LowPrecisionOptions):
        max_abs: float = dataclasses.field(default=FP16_MAX / 2, metadata={
            "help": "a calibrated |range| above this keeps the tensor's producer in float32"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

        if (unchanged := already_low(model, ir.DataType.FLOAT16)) is not None:
            return unchanged
        # NOTE: islands are named in the diagnostics and blocked by name: unnamed nodes get one first
        taken = {n.name for n in model.graph if n.name}
        for index, node in enumerate(model.graph):
            if not node.name:
                name = f"{node.op_type}_{index}"
                while name in taken:
                    name += "_"
                node.name = name
                taken.add(name)
        blocked_nodes, blocked_ops = prepare(model, ctx, self.options.block)
        overflow = _overflowing(model, ctx, self.options.max_abs)
        # NOTE: the tensor itself must stay float32: its readers join the island (the converter casts a
        # blocked node's output to fp16 for fp16 readers, which would overflow right there)
        readers = {u.node.name for n in model.graph if n.name in overflow for out in n.outputs
                   if out.name == overflow[n.name][0] for u in out.uses() if u.node.name}
        diagnostics = [Diagnostic(f"{tensor} reaches |{peak:.3g}| on the calibration samples "
                                  f"(fp16 overflows at {FP16_MAX:g})", node=name)
                       for name, (tensor, peak) in sorted(overflow.items())]
        done = convert(model, ir.DataType.FLOAT16, keep_io_types=self.options.keep_io_types,
                       block_ops={*DEFAULT_OP_BLOCK_LIST, *blocked_ops},
                       block_nodes={*blocked_nodes, *overflow, *readers})
        stats = {"nodes_float16": done.low_nodes, "nodes_float32": len(done.float_nodes),
                 "overflow_islands": len(overflow), "casts": done.casts,
                 "initializers_converted": done.initializers_converted}
        return PassResult(True, {k: v for k, v in stats.items() if v}, tuple(diagnostics))

