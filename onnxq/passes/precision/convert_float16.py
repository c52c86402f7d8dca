"""convert-float16: weights and compute in float16, with float32 islands where fp16 would break.

The conversion itself is onnxruntime's (``onnxruntime.transformers.float16.convert_float_to_float16``:
initializers, value types, Cast nodes around the nodes it is told to keep in float32). What this
pass adds is the choice of those islands and the clean-up after it:

- **overflow**: a tensor whose calibrated range reaches beyond ``max_abs`` (default half of fp16's
  65504, room for what the calibration samples did not show) stays float32 with its producer and
  its readers; the
  :class:`~onnxq.calibration.ranges.Ranges` come from the context when ``convert-precision`` is
  given samples, and each island is named in the stats;
- **ops**: onnxruntime's own block list (ops without fp16 kernels anywhere: TopK, NonMaxSuppression,
  Range, CumSum, Min, Max, the ai.onnx.ml ops...) plus ``block`` (op types or node names, the user's);
- **clean-up**: Cast pairs that undo each other between two islands (fp16 -> fp32 -> fp16) are
  removed, so Casts stand only at island borders; graph inputs and outputs keep their float32 type
  unless ``keep_io_types`` is off.

Follows onnxruntime's converter (and NVIDIA ModelOpt AutoCast's use of calibrated ranges).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx
import onnx_ir as ir

from onnxq.framework.base import Diagnostic, Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.interop import replace_contents

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


def _drop_cast_pairs(proto: onnx.ModelProto) -> int:
    """Removes Cast pairs that give back the type they started from (fp16 -> fp32 -> fp16 between two
    fp16 regions, fp32 -> fp16 -> fp32 between two islands: the second would round a float32 value
    through fp16 for nothing, or overflow)."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    for node in graph.node:
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if first is None or first.op_type != "Cast" or node.output[0] in outputs:
            continue
        source = first.input[0]
        if types.get(source) is not None and types.get(source) == cast_to(node):
            rename[node.output[0]] = rename.get(source, source)
    if not rename:
        return 0
    keep = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in rename)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    # NOTE: a first Cast read by nothing else is dead now
    used = {i for n in keep for i in n.input} | outputs
    keep = [n for n in keep if not (n.op_type == "Cast" and all(o not in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


class ConvertFloat16(Pass):
    name: ClassVar[str] = "convert-float16"
    summary: ClassVar[str] = ("Weights and compute to float16 (onnxruntime's converter), float32 islands for "
                              "calibrated overflow and a block list, Casts only at island borders")

    @dataclasses.dataclass(frozen=True)
    class Options:
        keep_io_types: bool = dataclasses.field(default=True, metadata={
            "help": "graph inputs and outputs stay float32 (a Cast at each)"})
        block: tuple[str, ...] = dataclasses.field(default=(), metadata={
            "help": "op types or node names kept in float32 (':'-separated)"})
        max_abs: float = dataclasses.field(default=FP16_MAX / 2, metadata={
            "help": "a calibrated |range| above this keeps the tensor's producer in float32"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        if any(v.dtype == ir.DataType.FLOAT16 for v in model.graph.initializers.values()):
            return PassResult(False, {}, (Diagnostic("the model already holds float16 weights; left unchanged"),))
        # NOTE: onnxruntime's converter blocks nodes by name: unnamed ones get one first
        taken = {n.name for n in model.graph if n.name}
        for index, node in enumerate(model.graph):
            if not node.name:
                name = f"{node.op_type}_{index}"
                while name in taken:
                    name += "_"
                node.name = name
                taken.add(name)
        node_names = taken
        blocked_nodes = [b for b in self.options.block if b in node_names]
        blocked_ops = [b for b in self.options.block if b not in node_names]
        overflow = _overflowing(model, ctx, self.options.max_abs)
        # NOTE: the tensor itself must stay float32: its readers join the island (the converter casts a
        # blocked node's output to fp16 for fp16 readers, which would overflow right there)
        readers = {u.node.name for n in model.graph if n.name in overflow for out in n.outputs
                   if out.name == overflow[n.name][0] for u in out.uses() if u.node.name}
        diagnostics = [Diagnostic(f"{tensor} reaches |{peak:.3g}| on the calibration samples "
                                  f"(fp16 overflows at {FP16_MAX:g})", node=name)
                       for name, (tensor, peak) in sorted(overflow.items())]
        proto = ir.to_proto(model)
        converted = convert_float_to_float16(
            proto, keep_io_types=self.options.keep_io_types, disable_shape_infer=False,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *blocked_ops],
            node_block_list=sorted({*blocked_nodes, *overflow, *readers}))
        pairs = _drop_cast_pairs(converted)
        # NOTE: the converter appends its Casts at the end of the node list (sorted here), and leaves
        # value_info it renamed with stale types (inferred again from scratch, in graph order)
        sorted_model = ir.from_proto(converted)
        sorted_model.graph.sort()
        converted = ir.to_proto(sorted_model)
        del converted.graph.value_info[:]
        new = ir.from_proto(onnx.shape_inference.infer_shapes(converted))
        replace_contents(model, new)
        fp16 = sum(1 for n in model.graph if any(o.dtype == ir.DataType.FLOAT16 for o in n.outputs)
                   and n.op_type != "Cast")
        kept = [n.name for n in model.graph if n.op_type != "Cast" and n.outputs
                and any(o.dtype == ir.DataType.FLOAT for o in n.outputs)]
        stats = {"nodes_float16": fp16, "nodes_float32": len(kept), "overflow_islands": len(overflow),
                 "casts": sum(n.op_type == "Cast" for n in model.graph), "cast_pairs_removed": pairs}
        return PassResult(True, {k: v for k, v in stats.items() if v}, tuple(diagnostics))

