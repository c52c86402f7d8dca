"""complete-carried-qdq: a carried QDQ graph (a QAT export) completed into groups a QDQ runtime fuses.

PyTorch's eager QAT exported with ``torch.onnx.export`` (``FakeQuantize`` ->
QuantizeLinear + DequantizeLinear) leaves three things no runtime fuses, measured on a digits CNN
trained here with ``torch.ao.quantization.prepare_qat`` (ConvBnReLU fused): onnxruntime CPU ran
the first convolution and the classifier in float, and the QNN EP refused the session outright
(a Conv with a DequantizeLinear input and a float output):

* **weights quantized at run time**: ``QuantizeLinear(float constant)`` -> DequantizeLinear. The
  QuantizeLinear is folded into an integer initializer, bit for bit as onnxruntime computes it
  (``round_to_grid``).
* **the ConvBn fold left in the graph**: ``Conv(x, DQ(w_q, s)) / f * gamma / sigma + beta'``
  (``torch.ao.nn.intrinsic.qat.ConvBn2d`` quantizes ``w * f`` and divides the output by ``f``,
  then applies BatchNorm). Per-output-channel constant factors after the Conv go into the
  weight's per-channel scale (``s * c``, the integers unchanged; a negative factor negates the
  integers of its channel, possible unless one is the type's minimum), a per-channel constant Add
  into the bias. The same real numbers, in the Conv's own QDQ group.
* **data movement between quantized ops**: ``DQ -> MaxPool -> Flatten -> Gemm`` without a Q
  after MaxPool: a QuantizeLinear / DequantizeLinear with the producer's scale and zero point is
  written after MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze (their outputs are values
  of the input's grid, so the pair is exact), which is what onnxruntime's own QDQ propagation
  does at load time for its CPU kernels, written once for every target.

Float biases of a Conv / Gemm whose input and weight both come from DequantizeLinear are written
as int32 with scale ``input_scale * weight_scale`` (what onnxruntime's quantizer writes; QNN
needs it). Scales the graph carries are never changed except by the exact folds above.
Follows what onnxruntime's ``qdq_propagation.cc`` and AIMET's QAT ConvBn folding do.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.constants import constant_array
from onnxq.passes.quantization._common import NameScope, make_initializer, make_node, round_to_grid

#: Ops whose output holds values of their input's quantization grid (MaxPool pads with -inf).
GRID_PRESERVING = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
#: Integer types a folded weight may have, with their range.
INT_RANGES = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255),
              ir.DataType.INT16: (-32768, 32767), ir.DataType.UINT16: (0, 65535)}


def _is_default(node: ir.Node, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and _is_default(node, op) else None


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and not value.is_graph_output() else None


def _dq_params(dq: ir.Node) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Constant (scale, zero point, axis) of a DequantizeLinear without blocks."""
    if "block_size" in dq.attributes or len(dq.inputs) < 2:
        return None
    scale = constant_array(dq.inputs[1])
    zero = constant_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros((), np.uint8)
    if scale is None or zero is None:
        return None
    return scale, zero, dq.attributes.get_int("axis", 1)


class CompleteCarriedQDQ(Pass):
    name: ClassVar[str] = "complete-carried-qdq"
    summary: ClassVar[str] = ("Carried QDQ (QAT exports) completed: weight Q folded, ConvBn factors into weight "
                              "scales, Q/DQ across MaxPool / Flatten / Reshape, int32 biases")

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        del ctx
        graph = model.graph
        names = NameScope(model)
        stats = {"weights_folded": 0, "conv_factors_folded": 0, "qdq_propagated": 0, "biases_quantized": 0}
        for node in list(graph):
            if _is_default(node, "QuantizeLinear"):
                stats["weights_folded"] += self._fold_weight(graph, names, node)
        # NOTE: a per-tensor weight scale times per-channel factors becomes per-channel: DequantizeLinear
        # takes an axis from opset 13 only
        per_channel_ok = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) >= 13
        for node in list(graph):
            if node.op_type == "Conv" and node.domain in ("", "ai.onnx"):
                stats["conv_factors_folded"] += self._fold_factors(graph, names, node, per_channel_ok)
        for node in list(graph):
            if node.domain in ("", "ai.onnx") and node.op_type in GRID_PRESERVING:
                stats["qdq_propagated"] += self._propagate(graph, names, node)
        for node in list(graph):
            if node.domain in ("", "ai.onnx") and node.op_type in ("Conv", "Gemm"):
                stats["biases_quantized"] += self._quantize_bias(graph, names, node)
        stats = {k: v for k, v in stats.items() if v}
        return PassResult(bool(stats), stats)

    @staticmethod
    def _fold_weight(graph: ir.Graph, names: NameScope, q: ir.Node) -> int:
        """QuantizeLinear of a float constant -> the integer constant it computes."""
        data = constant_array(q.inputs[0])
        if data is None or "block_size" in q.attributes or len(q.inputs) < 2:
            return 0
        scale = constant_array(q.inputs[1])
        zero = constant_array(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else np.zeros((), np.uint8)
        dtype = ir.DataType.from_numpy(zero.dtype) if zero is not None else None
        if scale is None or zero is None or dtype not in INT_RANGES or q.outputs[0].is_graph_output():
            return 0
        axis = q.attributes.get_int("axis", 1) % max(data.ndim, 1)
        shape = [-1 if i == axis else 1 for i in range(data.ndim)] if scale.ndim == 1 and scale.size > 1 else None
        s = scale.reshape(shape) if shape else scale
        z = zero.reshape(shape) if shape and zero.size > 1 else zero
        folded = round_to_grid(data, s, z, INT_RANGES[dtype], zero.dtype)
        value = make_initializer(graph, names, f"{q.inputs[0].name or 'weight'}_quantized", folded)
        q.outputs[0].replace_all_uses_with(value)
        graph.remove(q, safe=True)
        return 1

    @staticmethod
    def _fold_factors(graph: ir.Graph, names: NameScope, conv: ir.Node, per_channel_ok: bool) -> int:
        """Per-output-channel Mul / Div / Add constants after a Conv with a symmetric DQ weight."""
        dq = _producer(conv.inputs[1] if len(conv.inputs) > 1 else None, "DequantizeLinear")
        params = _dq_params(dq) if dq is not None else None
        w_q = constant_array(dq.inputs[0]) if dq is not None else None
        if params is None or w_q is None or w_q.ndim < 3 or np.any(params[1] != 0) or len(conv.outputs[0].uses()) != 1:
            return 0
        if len(dq.outputs[0].uses()) != 1 or (params[0].size > 1 and params[2] % w_q.ndim != 0):
            return 0
        channels = w_q.shape[0]
        bias = constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else np.zeros(channels, np.float32)
        if bias is None or bias.dtype != np.float32:
            return 0
        factor = np.ones(channels, np.float64)
        shift = bias.astype(np.float64)
        out, folded, last = conv.outputs[0], [], None
        while (reader := _single_use(out)) is not None and reader.op_type in ("Mul", "Div", "Add", "Sub") \
                and reader.domain in ("", "ai.onnx") and len(reader.inputs) == 2:
            other = reader.inputs[1] if reader.inputs[0] is out else reader.inputs[0]
            c = constant_array(other)
            if c is None or c.dtype != np.float32 or (reader.op_type in ("Div", "Sub") and reader.inputs[0] is not out):
                break
            per = _per_channel(c, channels, w_q.ndim)
            if per is None:
                break
            if reader.op_type == "Mul":
                factor, shift = factor * per, shift * per
            elif reader.op_type == "Div":
                factor, shift = factor / per, shift / per
            else:
                shift = shift + per if reader.op_type == "Add" else shift - per
            folded.append(reader)
            out, last = reader.outputs[0], reader
        if last is None or (not per_channel_ok and params[0].size == 1 and np.ptp(factor) > 0):
            return 0
        dtype = ir.DataType.from_numpy(w_q.dtype)
        negative = factor < 0
        lo = INT_RANGES.get(dtype, (0, 0))[0]
        if np.any(negative) and (lo >= 0 or np.any(w_q[negative] == lo)):
            return 0
        scale = np.broadcast_to(params[0].astype(np.float64), (channels,)) * np.abs(factor)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            return 0
        signs = np.where(negative, -1, 1).reshape([-1] + [1] * (w_q.ndim - 1))
        new_w = (w_q.astype(np.int32) * signs).astype(w_q.dtype)
        base = conv.name or "conv"
        dq.replace_input_with(0, make_initializer(graph, names, f"{base}_weight_q", new_w))
        uniform = params[0].size == 1 and np.ptp(factor) == 0
        shape = () if uniform else (channels,)
        dq.replace_input_with(1, make_initializer(graph, names, f"{base}_weight_scale",
                                                  (scale[:1] if uniform else scale).reshape(shape).astype(np.float32)))
        dq.replace_input_with(2, make_initializer(graph, names, f"{base}_weight_zero_point",
                                                  np.zeros(shape, w_q.dtype)))
        if not uniform:
            dq.attributes["axis"] = ir.AttrInt64("axis", 0)
        new_bias = make_initializer(graph, names, f"{base}_bias", shift.astype(np.float32))
        if len(conv.inputs) > 2:
            conv.replace_input_with(2, new_bias)
        else:
            conv.resize_inputs(3)
            conv.replace_input_with(2, new_bias)
        final = last.outputs[0]
        if final.is_graph_output():
            return 0  # NOTE: not reached in practice; a graph output keeps its producer's name
        final.replace_all_uses_with(conv.outputs[0])
        for node in reversed(folded):
            graph.remove(node, safe=True)
        return 1

    @staticmethod
    def _propagate(graph: ir.Graph, names: NameScope, node: ir.Node) -> int:
        """A Q/DQ pair with the input's parameters after a grid-preserving op that has none."""
        dq = _producer(node.inputs[0] if node.inputs else None, "DequantizeLinear")
        params = _dq_params(dq) if dq is not None else None
        out = node.outputs[0]
        if params is None or params[0].size != 1 or out.is_graph_output() or not out.uses():
            return 0
        if any(_is_default(use.node, "QuantizeLinear") for use in out.uses()):
            return 0
        if not any(use.node.op_type in GRID_PRESERVING or any(
                _producer(v, "DequantizeLinear") is not None for v in use.node.inputs if v is not out and v is not None)
                for use in out.uses()):
            return 0  # NOTE: only where a reader is itself part of a carried QDQ group (or moves data on to one)
        if len(node.outputs) != 1:
            return 0
        readers = list(out.uses())
        zero = dq.inputs[2] if len(dq.inputs) > 2 else None
        base = out.name or node.name or "propagated"
        q = make_node(CompleteCarriedQDQ.name, names, "QuantizeLinear", [out, dq.inputs[1], *([zero] if zero else [])],
                      base=f"{base}_q", output_dtype=dq.inputs[0].dtype or ir.DataType.UINT8, shape=out.shape)
        new = make_node(CompleteCarriedQDQ.name, names, "DequantizeLinear", [q.outputs[0], dq.inputs[1],
                        *([zero] if zero else [])], base=f"{base}_dq", output_dtype=ir.DataType.FLOAT, shape=out.shape)
        for use in readers:
            use.node.replace_input_with(use.idx, new.outputs[0])
        graph.insert_after(node, [q, new])
        return 1

    @staticmethod
    def _quantize_bias(graph: ir.Graph, names: NameScope, node: ir.Node) -> int:
        """A float bias between a DQ input and a DQ weight -> int32 at input scale x weight scale."""
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return 0
        bias = constant_array(node.inputs[2])
        x_dq = _producer(node.inputs[0], "DequantizeLinear")
        w_dq = _producer(node.inputs[1], "DequantizeLinear")
        if bias is None or bias.dtype != np.float32 or bias.ndim != 1 or x_dq is None or w_dq is None:
            return 0
        if node.op_type == "Gemm" and (node.attributes.get_int("transB", 0) != 1
                                       or node.attributes.get_float("alpha", 1.0) != 1.0
                                       or node.attributes.get_float("beta", 1.0) != 1.0):
            return 0
        xp, wp, w = _dq_params(x_dq), _dq_params(w_dq), constant_array(w_dq.inputs[0])
        if xp is None or wp is None or w is None or xp[0].size != 1 or (wp[0].size > 1 and wp[2] % w.ndim != 0):
            return 0
        scale = (xp[0].astype(np.float64).reshape(()) * np.broadcast_to(wp[0].astype(np.float64), bias.shape))
        if np.any(scale <= 0) or np.any(np.abs(bias / scale) > 2**31 - 1):
            return 0
        q = np.rint(bias.astype(np.float64) / scale).astype(np.int32)
        base = node.name or node.op_type
        data = make_initializer(graph, names, f"{base}_bias_quantized", q)
        per_tensor = wp[0].size == 1
        s = make_initializer(graph, names, f"{base}_bias_scale",
                             (scale[:1].reshape(()) if per_tensor else scale).astype(np.float32))
        dq = make_node(CompleteCarriedQDQ.name, names, "DequantizeLinear", [data, s], base=f"{base}_bias",
                       output_dtype=ir.DataType.FLOAT, shape=ir.Shape(bias.shape),
                       attributes=[] if per_tensor else [ir.AttrInt64("axis", 0)])
        graph.insert_before(node, dq)
        node.replace_input_with(2, dq.outputs[0])
        return 1


def _per_channel(c: np.ndarray, channels: int, ndim: int) -> np.ndarray | None:
    """A constant that broadcasts along the output channel axis (1) of an ``ndim`` conv output, per channel."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), np.float64)
    if c.ndim > ndim or c.size != channels:
        return None
    shape = (1,) * (ndim - c.ndim) + c.shape
    if shape[1] != channels:
        return None
    return c.reshape(channels).astype(np.float64)
