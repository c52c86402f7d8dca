"""qnn: Qualcomm's HTP (the Snapdragon NPU) through onnxruntime's QNN execution provider, A8W8.

Rules from /work/shared/TARGETS.md (onnxruntime's QNN EP source and its QNN quantization recipe),
checked on the HTP simulator that ``onnxruntime-qnn`` ships (:mod:`onnxq.targets.qnn_htp`):

- The HTP runs quantized graphs only, and static shapes only: every op's float inputs and outputs
  pass through Q/DQ (a QDQ node unit), graph inputs and outputs included; a node QNN does not take
  falls back to the CPU EP, or fails the load with ``session.disable_cpu_ep_fallback=1``.
- Activations uint8 asymmetric, or uint16 with ``qnn-a16`` (16-bit Q/DQ need opset 21, so the
  model is converted); weights int8 symmetric; int32 bias at x_scale * w_scale.
- Per-channel weights only for Conv (axis 0) and ConvTranspose (axis 1); MatMul and Gemm weights
  per-tensor.
- Data-movement ops (Reshape, Transpose, Slice, MaxPool...) keep their input's scale.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.targets.base import ACTIVATION_INPUTS, Target, UnknownTargetError, register_target

NAME = "qnn"
#: The same HTP with 16-bit activations (A16W8): finer activation steps for models A8W8 hurts.
A16_NAME = "qnn-a16"
A16_OPSET = 21
#: Ops the HTP runs as QDQ node units (onnxruntime's QNN op builders). Not Erf: measured, the HTP
#: refuses it (GELU goes to com.microsoft.Gelu instead).
INTEGER_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Concat", "AveragePool",
    "GlobalAveragePool", "Sigmoid", "Tanh", "Softmax", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid",
    "Relu", "Clip", "Elu", "Gelu", "Max", "Min", "ReduceMean", "ReduceMax", "ReduceSum",
    "LayerNormalization", "InstanceNormalization", "BatchNormalization", "Sqrt", "Exp", "Log", "Neg", "Abs",
    "Pow", "Where", "Pad", "Resize", "Tile", "Expand", "DepthToSpace", "SpaceToDepth",
})
ANCHOR_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
DATA_MOVEMENT_OPS = frozenset({
    "MaxPool", "Transpose", "Reshape", "Gather", "Squeeze", "Unsqueeze", "Slice", "Flatten", "Split",
})
#: Binary and variadic ops whose every float input is an activation to quantize.
_ALL_INPUTS = frozenset({"Sub", "Div", "Max", "Min", "Pow", "PRelu"})
#: Ops whose first input only is data (the rest are shapes, axes, pads, scales).
_FIRST_INPUT = frozenset({"Pad", "Resize", "Tile", "Expand", "ReduceMean", "ReduceMax", "ReduceSum"})

NOTES = {
    "Conv": "QDQ unit on the HTP; int8 symmetric weights per-channel on axis 0, int32 bias",
    "ConvTranspose": "QDQ unit on the HTP; weights per-channel on axis 1",
    "MatMul": "QDQ unit on the HTP; weights per-tensor (per-channel only for Conv/ConvTranspose)",
    "Gemm": "QDQ unit on the HTP; weights per-tensor",
    "*": "every float tensor is quantized: a float op falls back to the CPU EP",
}
NOTE = ("Qualcomm HTP through onnxruntime's QNN EP: uint8 activations everywhere (graph inputs and outputs "
        "too), int8 symmetric weights, per-channel for Conv only, static shapes")


@dataclasses.dataclass(frozen=True)
class QnnTarget(Target):
    """The QNN HTP profile: :class:`Target` data plus QNN's per-channel and input rules."""

    def weight_axis(self, node: ir.Node, rank: int) -> int | None:
        if node.op_type not in ("Conv", "ConvTranspose"):
            return None
        return super().weight_axis(node, rank)

    def is_integer_op(self, node: ir.Node) -> bool:
        # NOTE: fuse-gelu emits com.microsoft.Gelu for this target; QNN's op builders take it.
        return super().is_integer_op(node) or (node.op_type == "Gelu" and node.domain == "com.microsoft")

    def activation_inputs(self, node: ir.Node) -> tuple[int, ...]:
        if node.op_type in _ALL_INPUTS:
            return tuple(i for i, v in enumerate(node.inputs) if v is not None)
        if node.op_type in _FIRST_INPUT or node.op_type not in ACTIVATION_INPUTS:
            return (0,) if node.inputs and node.inputs[0] is not None else ()
        return super().activation_inputs(node)


def qnn_target(cpu: str | None = None, *, activation_bits: int = 8) -> Target:
    """The QNN HTP profile, A8W8 (``activation_bits=16``: A16W8); ``cpu`` does not apply (an NPU)."""
    name = NAME if activation_bits == 8 else A16_NAME
    if cpu is not None:
        raise UnknownTargetError(f"target {name} runs on Qualcomm's HTP; --cpu {cpu} does not apply to it")
    return QnnTarget(
        name=name,
        activation_dtype=ir.DataType.UINT8 if activation_bits == 8 else ir.DataType.UINT16,
        activation_symmetric=False,
        weight_dtype=ir.DataType.INT8,
        weight_symmetric=True,
        reduce_range=False,
        per_channel=True,
        min_per_channel_opset=13,
        # NOTE: 16-bit QuantizeLinear / DequantizeLinear exist from opset 21.
        min_qdq_opset=13 if activation_bits == 8 else A16_OPSET,
        integer_ops=INTEGER_OPS,
        output_optional_ops=frozenset(),
        anchor_ops=ANCHOR_OPS,
        data_movement_ops=DATA_MOVEMENT_OPS,
        absorbed_ops=frozenset(),
        float_ops=frozenset(),
        quantize_graph_outputs=True,
        static_shapes=True,
        float_nodes_run=False,
        wider_activations=A16_NAME if activation_bits == 8 else None,
        # NOTE: QNN's op builders take com.microsoft.Gelu where an Erf is refused (measured on the
        # HTP simulator: the zoo transformer 257/263 -> 231/231 nodes on QNN).
        gelu_form="ort-cpu",
        requires_bias_int32=True,
        cpu=None,
        cpu_note=NOTE,
        notes=NOTES,
    )


register_target(NAME, qnn_target)
register_target(A16_NAME, lambda cpu=None: qnn_target(cpu, activation_bits=16))
