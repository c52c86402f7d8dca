"""nnapi: Android's Neural Networks API through onnxruntime's NNAPI execution provider, A8W8.

Rules from onnxruntime's NNAPI EP source (``nnapi_builtin/builders/helper.h``,
``op_builder_helpers.cc``: ``GetQuantizedOpType``, ``IsQuantizedIOSupported``,
``IsQuantizationScaleSupported``, ``IsQuantizationZeroPointSupported``):

- QDQ node units it takes: Conv, Gemm, MatMul, Add, Mul, AveragePool, Concat, Resize, Transpose,
  Reshape, Softmax (plus the QLinear* single nodes); every other op runs in float on NNAPI when its
  table lists it, or on the CPU EP.
- Activations uint8 only, inputs and outputs, with a constant per-tensor scale and zero point
  ("TODO, add support of s8s8").
- Weights of Conv / Gemm / MatMul: int8 with zero point 0 ("u8s8"), per-channel only for Conv
  (Android API 29+, on axis 0; MatMul per-tensor), or uint8 per-tensor.
- Softmax's quantized output must have scale 1/256 and zero point 0: onnxq's calibrated ranges
  do not give that, so Softmax is left float (NNAPI runs it in float).
- HardSwish and HardSigmoid: NNAPI has neither; ``quantize`` lowers them to
  ``x * Clip(x + 3, 0, 6) / 6`` and ``Clip(alpha * x + beta, 0, 1)`` (``lower-hardswish``).
- Static shapes: onnxruntime's mobile checker counts a node with a dynamic input as unsupported;
  ``quantize`` fixes the inputs to the calibration samples' shapes.

The self-check on an x86 machine runs the result on the CPU EP, where full-range int8 weights
with uint8 activations can saturate on AVX2 without VNNI (it says so); an ARM device does not.
``onnxq check --target nnapi`` partitions the output with onnxruntime's own usability checker.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.targets.base import Target, UnknownTargetError, register_target

NAME = "nnapi"
INTEGER_OPS = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "AveragePool", "Concat", "Resize"})
ANCHOR_OPS = frozenset({"Conv", "Gemm", "MatMul"})
DATA_MOVEMENT_OPS = frozenset({"Transpose", "Reshape"})
NOTES = {
    "Conv": "QDQ unit on NNAPI; int8 weights with zero point 0, per-channel on axis 0 (API 29+)",
    "Gemm": "QDQ unit on NNAPI; int8 weights per-tensor",
    "MatMul": "QDQ unit on NNAPI; int8 weights per-tensor",
    "Softmax": "float on NNAPI: its quantized output must be scale 1/256, zero point 0",
    "HardSwish": "lowered to Add / Clip / Mul: NNAPI has no HardSwish or HardSigmoid",
    "HardSigmoid": "lowered to Mul / Add / Clip: NNAPI has no HardSigmoid",
    "*": "uint8 activations only; ops outside the QDQ list run in float on NNAPI or on the CPU EP",
}
NOTE = ("Android NNAPI through onnxruntime's NNAPI EP: uint8 activations, int8 weights with zero point 0 "
        "(per-channel for Conv only), static shapes")


@dataclasses.dataclass(frozen=True)
class NnapiTarget(Target):
    """The NNAPI profile: :class:`Target` data plus NNAPI's per-channel rule (Conv only)."""

    def weight_axis(self, node: ir.Node, rank: int) -> int | None:
        if node.op_type != "Conv":
            return None
        return super().weight_axis(node, rank)


def nnapi_target(cpu: str | None = None) -> Target:
    """The NNAPI profile; ``cpu`` does not apply (the device's NNAPI driver picks the hardware)."""
    if cpu is not None:
        raise UnknownTargetError(f"target {NAME} runs on the device's NNAPI driver; --cpu {cpu} does not apply to it")
    return NnapiTarget(
        name=NAME,
        activation_dtype=ir.DataType.UINT8,
        activation_symmetric=False,
        weight_dtype=ir.DataType.INT8,
        weight_symmetric=True,
        reduce_range=False,
        per_channel=True,
        min_per_channel_opset=13,
        min_qdq_opset=10,
        integer_ops=INTEGER_OPS,
        output_optional_ops=frozenset(),
        anchor_ops=ANCHOR_OPS,
        data_movement_ops=DATA_MOVEMENT_OPS,
        absorbed_ops=frozenset({"Relu", "Clip"}),
        # NOTE: HardSwish is float here so that quantize lowers it to Add / Clip / Mul, which NNAPI
        # runs: its table has no HardSwish or HardSigmoid (a PP-LCNet classifier: 2 partitions -> 1).
        float_ops=frozenset({"Softmax", "HardSwish"}),
        lowered_ops=frozenset({"HardSigmoid"}),
        quantize_graph_outputs=False,
        static_shapes=True,
        float_nodes_run=True,
        wider_activations=None,
        gelu_form="onnx",
        requires_bias_int32=True,
        cpu=None,
        cpu_note=NOTE,
        notes=NOTES,
    )


register_target(NAME, nnapi_target)
