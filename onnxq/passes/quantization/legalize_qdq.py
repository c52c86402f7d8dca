"""legalize-qdq: carried int8 activations -> uint8 (the same values), for targets that run uint8.

A graph that already carries QuantizeLinear / DequantizeLinear (a QAT export, onnxruntime's
``quantize_static`` with ``activation_type=QInt8``, another tool's output) keeps its scales, but
its int8 activations are not what onnxruntime's x86 kernels are fast at: on an AMD EPYC with AVX2
(1 thread) a YOLOv8n detector quantized by ``quantize_static`` with int8 activations ran at 0.57x
FP32; the same graph with uint8 activations at 1.40x. The conversion is exact: ``q_u8 = q_s8 + 128``
with zero point ``z + 128`` represents the same real values, and QuantizeLinear saturates at the
same real bounds.

Converted: each QuantizeLinear of an activation with an int8 zero-point initializer whose output is
read only by DequantizeLinear nodes with the same zero point (the Q, its DQs, one new uint8 zero
point), and each int8 constant read through a DequantizeLinear by anything but a weight slot
(Conv / ConvTranspose / Gemm / MatMul input B stay int8: onnxruntime's u8s8 kernels take them).
Left alone: a Q whose output is a graph output or feeds another op, zero points that are not
initializers, 16-bit and float8 types. Runs only for targets with uint8 asymmetric activations.

Where the target keeps weights to 7 bits (``reduce_range``: ort-cpu on AVX2 without VNNI, whose
u8s8 kernels saturate the int16 pair sums of ``vpmaddubsw``), carried full-range int8 weights
(any ``|w| > 64``) move to uint8 (``w + 128``, zero point ``z + 128``): the same values, run by
the u8u8 kernels, which do not saturate. A PyTorch QAT digits CNN (full-range per-channel weights)
measured 16.0 dB against its own QAT model on AVX2 as carried, 50.2 dB after; u8u8 keeps 1.4x
over FP32 on Zen 3 (``ort_cpu`` module notes).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.fusion._rewrite import fresh_name
from onnxq.targets.base import Target

#: Input slot of the weight (kept int8) of the ops onnxruntime runs as u8s8.
WEIGHT_SLOTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _int8_initializer(value: ir.Value | None) -> np.ndarray | None:
    if value is None or not value.is_initializer() or value.const_value is None or value.is_graph_input():
        return None
    if value.const_value.dtype != ir.DataType.INT8:
        return None
    return np.asarray(value.const_value.numpy())


def _shifted(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new uint8 initializer holding ``array + 128``."""
    name = fresh_name(graph, f"{base}_u8")
    value = ir.Value(name=name, const_value=ir.tensor((array.astype(np.int16) + 128).astype(np.uint8), name=name))
    graph.register_initializer(value)
    return value


class LegalizeQDQ(Pass):
    name: ClassVar[str] = "legalize-qdq"
    summary: ClassVar[str] = "Carried int8 activations (Q/DQ, constants) -> uint8 with zero point + 128, for uint8 targets"
    needs: ClassVar[tuple[type, ...]] = (Target,)

    @dataclasses.dataclass(frozen=True)
    class Options:
        pass

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        if target.activation_dtype != ir.DataType.UINT8 or target.activation_symmetric:
            return PassResult(False, {})
        graph = model.graph
        activations = constants = weights = 0
        for node in list(graph):
            if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx") and len(node.inputs) >= 3:
                activations += self._activation(graph, node)
            elif node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and len(node.inputs) >= 3:
                constants += self._constant(graph, node)
                if target.reduce_range:
                    weights += self._full_range_weight(graph, node)
        stats = {k: v for k, v in (("activations_to_uint8", activations), ("constants_to_uint8", constants),
                                   ("full_range_weights_to_uint8", weights)) if v}
        return PassResult(bool(stats), stats)

    @staticmethod
    def _activation(graph: ir.Graph, q: ir.Node) -> int:
        x, zp = q.inputs[0], q.inputs[2]
        zero = _int8_initializer(zp)
        out = q.outputs[0]
        if x is None or x.const_value is not None or zero is None or out.is_graph_output():
            return 0
        readers = [use.node for use in out.uses()]
        if not readers or any(r.op_type != "DequantizeLinear" or r.domain not in ("", "ai.onnx") or len(r.inputs) < 3
                               or (z := _int8_initializer(r.inputs[2])) is None or not np.array_equal(z, zero)
                               or r.attributes.get_int("axis", 1) != q.attributes.get_int("axis", 1)
                               for r in readers):
            return 0
        new = _shifted(graph, zp.name or "zero_point", zero)  # type: ignore[union-attr]
        q.replace_input_with(2, new)
        for reader in readers:
            reader.replace_input_with(2, new)
        out.type = ir.TensorType(ir.DataType.UINT8)  # NOTE: a type of its own (a clone shares the original's)
        return 1

    @staticmethod
    def _constant(graph: ir.Graph, dq: ir.Node) -> int:
        """An int8 constant read through a DQ outside weight slots -> uint8, the same values."""
        return LegalizeQDQ._shift_dq(graph, dq, weights=False)

    @staticmethod
    def _full_range_weight(graph: ir.Graph, dq: ir.Node) -> int:
        """Full-range int8 weights (saturating u8s8 on AVX2) -> uint8, the same values."""
        return LegalizeQDQ._shift_dq(graph, dq, weights=True)

    @staticmethod
    def _shift_dq(graph: ir.Graph, dq: ir.Node, *, weights: bool) -> int:
        """The int8 data and zero point of ``dq`` moved to uint8 (+128) when every reader is a
        weight slot (``weights``, and some ``|w| > 64``) or none is (``not weights``)."""
        data, zp = _int8_initializer(dq.inputs[0]), _int8_initializer(dq.inputs[2])
        if data is None or zp is None:
            return 0
        if weights and (not data.size or int(np.abs(data.astype(np.int16)).max()) <= 64):
            return 0
        uses = dq.outputs[0].uses()
        if not uses or any((WEIGHT_SLOTS.get(u.node.op_type) == u.idx) != weights for u in uses):
            return 0
        if len(dq.inputs[0].uses()) != 1:  # type: ignore[union-attr]
            return 0  # NOTE: shared int8 data read elsewhere as int8
        base = dq.inputs[0].name or ("weight" if weights else "constant")  # type: ignore[union-attr]
        dq.replace_input_with(0, _shifted(graph, base, data))
        dq.replace_input_with(2, _shifted(graph, dq.inputs[2].name or "zero_point", zp))  # type: ignore[union-attr]
        return 1
