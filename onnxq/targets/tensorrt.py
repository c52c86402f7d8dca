"""tensorrt: TensorRT explicit quantization (QDQ graphs built with TensorRT's ONNX parser).

Rules from /work/shared/TARGETS.md (NVIDIA's developer guide and ModelOpt); TensorRT cannot run
here, so :mod:`onnxq.targets.tensorrt_rules` checks graphs against the same rules instead:

- int8 symmetric everywhere: zero point 0, activations in [-128, 127], weights in [-127, 127].
- Activations per-tensor; weights per-channel on constant weights only, on the output-channel
  axis (Conv 0, ConvTranspose 1; Gemm/MatMul on N), which needs opset >= 13.
- Q/DQ on both inputs of Conv, ConvTranspose, Gemm and MatMul, not on their outputs: TensorRT
  fuses Conv+BN+ReLU and picks output precision itself, so ReLU is not absorbed into Q ranges.
- The residual input of an Add that follows a convolution is quantized, so TensorRT fuses the
  Add into the convolution; nothing goes between the convolution and the Add.
- Biases stay float (TensorRT quantizes them itself).

A subclass of :class:`Target` only because the Add rule depends on the graph around the node.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.targets.base import Target, UnknownTargetError, register_target

NAME = "tensorrt"
#: Ops whose activation and weight inputs both get Q/DQ.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Ops that produce the tensor an Add fuses into (Conv+Add, ConvTranspose+Add).
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
#: Ops TensorRT moves DQ forward / Q backward through (TARGETS.md).
COMMUTING_OPS = frozenset(
    {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Identity"}
)
NOTES = {
    "Conv": "int8 with both inputs DQ'd; weights per-channel on axis 0; Conv+BN+ReLU fused by TensorRT",
    "ConvTranspose": "int8 with both inputs DQ'd; weights per-channel on axis 1",
    "Gemm": "int8 with both inputs DQ'd; weights per-channel on N (transB=1: axis 0)",
    "MatMul": "int8 with both inputs DQ'd; constant weights per-channel on N (axis 1)",
    "Add": "after a Conv: quantize only the residual input, so the Add fuses into the Conv",
    "Concat": "inputs must share one scale (TensorRT requantizes otherwise)",
}
NOTE = (
    "TensorRT explicit quantization: int8 symmetric (zero point 0), per-tensor activations, "
    "per-channel weights, no output Q/DQ, residual Adds fused into convolutions"
)


def residual_slot(node: ir.Node) -> int | None:
    """For an Add fed by a convolution, the input slot of the residual (the other operand)."""
    if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    from_conv = [conv_producer(v) is not None for v in node.inputs]
    if from_conv[0] and not from_conv[1]:
        return 1
    if from_conv[1] and not from_conv[0]:
        return 0
    if all(from_conv):
        # NOTE: TensorRT fuses one convolution into the Add. The skip connection is the input with
        # other consumers (MobileNetV2: the previous block's projection also feeds the next
        # block), and it is quantized for them anyway; else the second input.
        fan_out = [len(v.uses()) > 1 for v in node.inputs]  # type: ignore[union-attr]
        return 0 if fan_out[0] and not fan_out[1] else 1
    return None


def conv_producer(value: ir.Value | None) -> ir.Node | None:
    """The Conv/ConvTranspose that produces ``value`` directly or through a BatchNormalization."""
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "BatchNormalization" and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    if producer is not None and producer.op_type in CONV_OPS and producer.domain in ("", "ai.onnx"):
        return producer
    return None


@dataclasses.dataclass(frozen=True)
class TensorRTTarget(Target):
    """The TensorRT profile: :class:`Target` data plus the residual-Add rule."""

    def activation_inputs(self, node: ir.Node) -> tuple[int, ...]:
        if node.op_type == "Add":
            slot = residual_slot(node)
            return () if slot is None else (slot,)
        return super().activation_inputs(node)

    def is_integer_op(self, node: ir.Node) -> bool:
        if not super().is_integer_op(node):
            return False
        if node.op_type == "Add":
            return residual_slot(node) is not None
        return True


def tensorrt_target(cpu: str | None = None) -> Target:
    """The TensorRT profile; ``cpu`` does not apply (TensorRT runs on NVIDIA GPUs)."""
    if cpu is not None:
        raise UnknownTargetError(f"target {NAME} runs on NVIDIA GPUs; --cpu {cpu} does not apply to it")
    ops = COMPUTE_OPS | {"Add"}
    return TensorRTTarget(
        name=NAME,
        activation_dtype=ir.DataType.INT8,
        activation_symmetric=True,
        weight_dtype=ir.DataType.INT8,
        weight_symmetric=True,
        reduce_range=False,
        per_channel=True,
        min_per_channel_opset=13,
        min_qdq_opset=13,
        integer_ops=ops,
        # NOTE: no output Q/DQ by default: TensorRT chooses output precision and fuses epilogues.
        output_optional_ops=ops,
        anchor_ops=ops,
        data_movement_ops=frozenset(),
        absorbed_ops=frozenset(),
        float_ops=frozenset(),
        quantize_graph_outputs=False,
        gelu_form="tensorrt",
        requires_bias_int32=False,
        cpu=None,
        cpu_note=NOTE,
        notes=NOTES,
    )


register_target(NAME, tensorrt_target)
