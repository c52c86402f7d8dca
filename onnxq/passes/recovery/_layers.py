"""What the accuracy-recovery passes share: linear layers and their channel axes, the weight
quantizer as ``quantize-weights`` applies it, and per-channel statistics of activations.

Hand-written: onnx_ir gives the graph; the axes below are the ONNX operators' own layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.passes.quantization._common import along_axis, round_to_grid, weight_scales

LINEAR_OPS = frozenset({"Conv", "Gemm", "MatMul"})
#: Tensors read per onnxruntime session by :func:`channel_statistics`.
STATISTICS_GROUP = 24


@dataclasses.dataclass
class Linear:
    """A Conv / Gemm / MatMul whose weight (and bias, when present) are initializers."""

    node: ir.Node
    weight: ir.Value
    bias: ir.Value | None
    #: Axis of the weight that indexes output / input channels.
    out_axis: int
    in_axis: int
    groups: int = 1

    @property
    def w(self) -> np.ndarray:
        return np.asarray(self.weight.const_value.numpy(), np.float32)  # type: ignore[union-attr]

    @property
    def b(self) -> np.ndarray | None:
        return None if self.bias is None else np.asarray(self.bias.const_value.numpy(), np.float32)  # type: ignore[union-attr]

    @property
    def depthwise(self) -> bool:
        shape = self.weight.const_value.shape  # type: ignore[union-attr]
        return self.groups > 1 and self.groups == shape[0] and shape[1] == 1

    @property
    def channels_out(self) -> int:
        return int(self.weight.const_value.shape[self.out_axis])  # type: ignore[union-attr]


def _initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None and not value.is_graph_input()


def linear(node: ir.Node) -> Linear | None:
    """The node as a :class:`Linear`, or None (other op, computed weight, unsupported layout)."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if not _initializer(weight) or (bias is not None and not _initializer(bias)):
        return None
    w = weight.const_value
    if w is None or w.dtype != ir.DataType.FLOAT:
        return None
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        if groups != 1 and not (groups == w.shape[0] and w.shape[1] == 1):
            return None  # grouped but not depthwise
        return Linear(node, weight, bias, 0, 1, groups)
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or len(w.shape) != 2:
            return None
        if bias is not None and (bias.const_value is None or bias.const_value.shape != (w.shape[
                0 if node.attributes.get_int("transB", 0) else 1],)):
            return None  # a broadcast bias would not follow a per-channel scale
        return Linear(node, weight, bias, *((0, 1) if node.attributes.get_int("transB", 0) else (1, 0)))
    if len(w.shape) != 2:
        return None
    return Linear(node, weight, None, 1, 0)


def quantized_layers(model: ir.Model, target: Any, selection: Any) -> list[Linear]:
    """The linear layers ``insert-qdq`` will quantize whose input is an activation, in graph order.

    Read from the placement plan itself: not the filters of a signal-processing front end, nor a
    layer with no quantized neighbour, nor anything else the plan leaves float. A pass that changes
    a layer's function to suit its rounded weights must not touch a layer that stays float.
    """
    from onnxq.passes.quantization._plan import make_plan

    planned = set(make_plan(model, target, selection).quantized)
    return [layer for node in model.graph
            if node in planned and (layer := linear(node)) is not None
            and node.inputs[0] is not None and not node.inputs[0].is_initializer()]


def scale_along(array: np.ndarray, factor: np.ndarray, axis: int) -> np.ndarray:
    """``array`` with slice ``i`` along ``axis`` multiplied by ``factor[i]``."""
    shape = [1] * array.ndim
    shape[axis] = -1
    return (array * factor.reshape(shape)).astype(np.float32)


def set_initializer(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(array, np.float32), name=value.name)


def fake_quantize_weight(w: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    """``w`` quantized and dequantized as ``quantize-weights`` does (symmetric, per channel on ``axis``)."""
    scale = along_axis(weight_scales(w, (axis,) if axis is not None else (), qmax), w.ndim, axis)
    return (round_to_grid(w, scale, 0, (-qmax, qmax), np.float32) * scale).astype(np.float32)


def single_user(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def read_activations(model: ir.Model, tensors: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]],
                     visit: Callable[[str, np.ndarray], None], *, max_samples: int) -> None:
    """Calls ``visit(name, array)`` for each of ``tensors`` on each of the first ``max_samples`` feeds.

    Sessions over copies of the model that expose a group of tensors each: onnxruntime holds every
    requested output of a run at once, and all the layer inputs of an 800x608 detector together are
    gigabytes. Nothing is kept between calls.
    """
    import onnxruntime as ort

    from onnxq.runtime import select_inputs

    if not tensors:
        return
    proto = ir.to_proto(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # NOTE: the arena would keep the largest run's activations
    samples = [select_inputs(model, f) for f, _ in zip(feeds, range(max_samples), strict=False)]
    for start in range(0, len(tensors), STATISTICS_GROUP):
        group = list(tensors[start:start + STATISTICS_GROUP])
        del proto.graph.output[:]
        proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in group)
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for feed in samples:
            for name, value in zip(group, sess.run(group, feed), strict=True):
                visit(name, np.asarray(value, np.float32))
        del sess


def channel_statistics(model: ir.Model, tensors: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]],
                       axes: Mapping[str, int], *, max_samples: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel ``absmax`` and ``mean`` of ``tensors`` (channel axis from ``axes``) over ``feeds``,
    streamed (memory does not grow with the sample count)."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    count: dict[str, float] = {}

    def visit(name: str, value: np.ndarray) -> None:
        # NOTE: reductions over the other axes, no moved or absolute copy of the (large) activation
        axis = axes[name] % value.ndim
        others = tuple(i for i in range(value.ndim) if i != axis)
        channels = value.shape[axis]
        entry = stats.setdefault(name, {"absmax": np.zeros(channels), "sum": np.zeros(channels)})
        absmax = np.maximum(value.max(axis=others), -value.min(axis=others))
        entry["absmax"] = np.maximum(entry["absmax"], absmax)
        entry["sum"] += value.sum(axis=others, dtype=np.float64)
        count[name] = count.get(name, 0.0) + value.size // max(channels, 1)

    read_activations(model, tensors, feeds, visit, max_samples=max_samples)
    for name, entry in stats.items():
        entry["mean"] = entry.pop("sum") / max(count[name], 1.0)
    return stats


def activation_axis(node: ir.Node) -> int:
    """The channel axis of ``node``'s activation input: 1 for Conv (NCHW), the last for Gemm/MatMul."""
    return 1 if node.op_type == "Conv" else -1
