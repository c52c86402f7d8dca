"""correct-bias: cancel the mean output error that weight quantization adds to each layer.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV
2019, sec. 4.2), in its empirical form (AIMET's ``bias_correction`` with calibration data): a
rounded weight ``W_q = W + dW`` shifts the expected output by ``dW @ E[x]``; with ``E[x]`` per input
channel measured on the calibration samples (of the float model), the bias becomes
``b - dW @ E[x]`` so that the quantized layer is unbiased. ``dW`` is computed with the same
quantizer ``quantize-weights`` applies afterwards (symmetric int8, per channel on the target's
axis, 7-bit on AVX2), so the correction matches the weights that will be written. Convolutions sum
``dW`` over the kernel window (border padding is ignored, as in the paper). Layers without a bias
get one (Conv, Gemm); a MatMul is corrected through the constant bias of an Add after it.

Needs the ``Target`` and the ``CalibrationData`` as resources; runs on the float model before
``insert-qdq``. Written here: onnxruntime has no bias correction; AIMET's needs its own sessions.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.calibration.data import CalibrationData
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.quantization._common import Selection
from onnxq.passes.recovery._layers import (
    Linear,
    activation_axis,
    channel_statistics,
    fake_quantize_weight,
    quantized_layers,
    set_initializer,
    single_user,
)
from onnxq.targets.base import Target

#: Node metadata that records a corrected bias (the pass is idempotent).
MARK = "onnxq.bias_corrected"


def bias_shift(layer: Linear, w_deq: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(W_deq - W) @ E[x]`` per output channel: the mean error the rounded weights add."""
    dw = (w_deq.astype(np.float64) - layer.w.astype(np.float64))
    if layer.node.op_type == "Conv":
        summed = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # [Cout, Cin/g]
        if layer.depthwise:
            return summed[:, 0] * mean
        return summed @ mean
    if layer.out_axis == 0:  # Gemm transB=1: [N, K]
        return dw @ mean
    return mean @ dw  # [K, N]


def _add_bias(layer: Linear, channels: int) -> ir.Value | None:
    """The bias initializer to correct: the layer's own, a new one (Conv, Gemm), or an Add's."""
    if layer.bias is not None:
        return layer.bias
    node = layer.node
    if node.op_type in ("Conv", "Gemm"):
        graph = node.graph
        assert graph is not None
        value = ir.Value(name=f"{node.name or node.outputs[0].name}_corrected_bias",
                         const_value=ir.tensor(np.zeros(channels, np.float32)))
        value.const_value.name = value.name  # type: ignore[union-attr]
        graph.register_initializer(value)
        node.resize_inputs(3)
        node.replace_input_with(2, value)
        layer.bias = value
        return value
    user = single_user(node.outputs[0])
    if user is not None and user.op_type == "Add":
        for other in user.inputs:
            if other is not None and other is not node.outputs[0] and other.is_initializer() and \
                    other.const_value is not None and other.const_value.shape == (channels,) and \
                    len(other.uses()) == 1:
                return other
    return None


class CorrectBias(Pass):
    name: ClassVar[str] = "correct-bias"
    summary: ClassVar[str] = "Cancel the mean error of quantized weights through the bias (empirical bias correction)"
    needs: ClassVar[tuple[type, ...]] = (Target, CalibrationData)

    @dataclasses.dataclass(frozen=True)
    class Options:
        per_channel: bool = dataclasses.field(default=True, metadata={"help": "weights will be per-channel"})
        max_samples: int = dataclasses.field(default=32, metadata={"help": "calibration samples for E[x]"})
        include: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "only these nodes"})
        exclude: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "leave these nodes alone"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        data = ctx.resource(CalibrationData)
        selection = Selection(self.options.include, self.options.exclude)
        layers = quantized_layers(model, target, selection)
        if not layers:
            return PassResult(False, {})
        inputs = {}
        for layer in layers:
            name = layer.node.inputs[0].name  # type: ignore[union-attr]
            inputs[str(name)] = activation_axis(layer.node)
        stats = channel_statistics(model, sorted(inputs), (f for _, f in data.feeds(model)), inputs,
                                   max_samples=self.options.max_samples)
        qmin, qmax = target.weight_qrange()
        qlim = int(min(-qmin, qmax))
        opset = model.opset_imports.get("", 0)
        corrected = 0
        largest = 0.0
        for layer in layers:
            entry = stats.get(str(layer.node.inputs[0].name))  # type: ignore[union-attr]
            if entry is None or layer.node.metadata_props.get(MARK) == "1":
                continue
            mean = entry["mean"]
            expected = layer.w.shape[layer.in_axis] * (layer.groups if layer.depthwise else 1)
            if mean.shape[0] != expected:
                continue
            axis = target.weight_axis(layer.node, layer.w.ndim) if (
                self.options.per_channel and target.per_channel and opset >= target.min_per_channel_opset) else None
            shift = bias_shift(layer, fake_quantize_weight(layer.w, axis, qlim), mean)
            if not np.any(np.abs(shift) > 0):
                continue
            bias = _add_bias(layer, shift.shape[0])
            if bias is None:
                continue
            old = np.asarray(bias.const_value.numpy(), np.float64)  # type: ignore[union-attr]
            set_initializer(bias, (old - shift).astype(np.float32))
            layer.node.metadata_props[MARK] = "1"  # NOTE: a second run must not correct twice
            corrected += 1
            largest = max(largest, float(np.max(np.abs(shift))))
        if not corrected:
            return PassResult(False, {})
        return PassResult(True, {"biases_corrected": corrected, "largest_shift_x1e6": int(largest * 1e6)})
