"""check_tensorrt: walks a QDQ graph against TensorRT's explicit-quantization rules.

TensorRT cannot run here, so its rules (/work/shared/TARGETS.md, see :mod:`onnxq.targets.tensorrt`)
are checked on the graph. Each :class:`Violation` names the node and the rule::

    for v in check_tensorrt(model):
        print(v)        # "Conv_12: [zero-point] TensorRT needs zero point 0 for int8 weights ..."

Errors make TensorRT reject the graph or compute something else; warnings cost speed (a
convolution left in float, a broken Conv+Add fusion, a requantizing Concat, an extra reformat).
Hand-written: no library checks QDQ placement against TensorRT's rules (ModelOpt only emits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from onnxq.targets.tensorrt import COMMUTING_OPS, COMPUTE_OPS, conv_producer, residual_slot

Q_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Rule ids, in the order they are checked.
RULES = {
    "quant-type": "Q/DQ are int8",
    "zero-point": "zero points are 0",
    "scale": "scales are constant, finite and > 0",
    "weight-range": "int8 weights lie in [-127, 127]",
    "per-tensor-activation": "activations are quantized per-tensor",
    "weight-axis": "per-channel weights use the output-channel axis (Conv 0, ConvTranspose 1, Gemm/MatMul N)",
    "per-channel-opset": "per-channel scales need opset >= 13",
    "qdq-pair": "a Q and its DQ use the same scale",
    "inputs-quantized": "Conv/ConvTranspose/Gemm/MatMul have both inputs dequantized",
    "conv-add-fusion": "no Q/DQ between a convolution and the Add it fuses into",
    "residual-quantized": "the residual input of an Add after a convolution is dequantized",
    "concat-scale": "Concat inputs share one scale",
    "output-qdq": "no Q/DQ on graph outputs",
    "onnx-domain": "only ai.onnx ops (others need a TensorRT plugin)",
}
ERROR, WARNING = "error", "warning"


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: where, which rule, and what to do about it."""

    node: str
    rule: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.node}: [{self.rule}] {self.message}"


def check_tensorrt(model: ir.Model) -> list[Violation]:
    """Every TensorRT rule the QDQ graph breaks, in graph order (subgraphs included)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    found: list[Violation] = []
    for graph in model.graphs():
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                found.append(Violation(
                    _name(node), "onnx-domain",
                    f"TensorRT's ONNX parser has no {node.domain}.{node.op_type} (it needs a plugin); "
                    "quantize for tensorrt without onnxruntime-specific fusions"))
                continue
            if node.op_type in Q_OPS:
                found.extend(_check_qdq(node, opset))
            elif node.op_type in COMPUTE_OPS:
                found.extend(_check_compute(node))
            elif node.op_type == "Add":
                found.extend(_check_add(node))
            elif node.op_type == "Concat":
                found.extend(_check_concat(node))
        for value in graph.outputs:
            producer = value.producer()
            if producer is not None and producer.op_type in Q_OPS:
                found.append(Violation(
                    _name(producer), "output-qdq",
                    f"graph output '{value.name}' comes out of {producer.op_type}: TensorRT picks output "
                    "precision itself; leave outputs float", WARNING))
    return found


# --- Q / DQ nodes ---------------------------------------------------------------------------
def _check_qdq(node: ir.Node, opset: int) -> Iterator[Violation]:
    name = _name(node)
    kind = _kind(node)
    scale = _const(node.inputs[1] if len(node.inputs) > 1 else None)
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    zero_array = _const(zero)
    qtype = _quantized_type(node, zero)
    if qtype is not None and qtype != ir.DataType.INT8:
        yield Violation(name, "quant-type", f"{kind} is {qtype.name.lower()}; TensorRT needs int8")
    if zero is not None:
        if zero_array is None:
            yield Violation(name, "zero-point", f"TensorRT needs a constant zero point 0 for int8 {kind}")
        elif np.any(zero_array != 0):
            yield Violation(name, "zero-point", f"TensorRT needs zero point 0 for int8 {kind} "
                                                f"(found {_show(zero_array)})")
    if scale is None:
        yield Violation(name, "scale", f"scale of the {kind} is not a constant; TensorRT needs constant scales")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        yield Violation(name, "scale", f"scale of the {kind} must be finite and > 0 (found {_show(scale)})")
    per_channel = scale is not None and scale.size > 1
    if per_channel and opset < 13:
        yield Violation(name, "per-channel-opset", f"per-channel scales need opset >= 13 (model has {opset})")
    if per_channel and kind == "activations":
        yield Violation(name, "per-tensor-activation",
                        f"activation '{node.inputs[0].name}' has {scale.size} scales; TensorRT quantizes "
                        "activations per-tensor")
    if node.op_type == "DequantizeLinear" and kind == "weights":
        data = _weight_data(node)
        if data is not None and data.dtype == np.int8 and np.any(data == -128):
            yield Violation(name, "weight-range", "int8 weights hold -128; TensorRT weights lie in [-127, 127]")
        if per_channel:
            yield from _check_weight_axis(node, scale)  # type: ignore[arg-type]
    if node.op_type == "QuantizeLinear":
        for use in node.outputs[0].uses():
            dq = use.node
            if dq.op_type != "DequantizeLinear":
                continue
            dq_scale = _const(dq.inputs[1] if len(dq.inputs) > 1 else None)
            if scale is not None and dq_scale is not None and (
                    scale.shape != dq_scale.shape or not np.array_equal(scale, dq_scale)):
                yield Violation(_name(dq), "qdq-pair", f"dequantizes '{node.outputs[0].name}' with another "
                                                      f"scale than its QuantizeLinear {name}")


def _check_weight_axis(dq: ir.Node, scale: np.ndarray) -> Iterator[Violation]:
    attr = dq.attributes.get("axis")
    data = dq.inputs[0]
    rank = len(data.shape) if data is not None and data.shape is not None else None
    axis = attr.as_int() if attr is not None else 1
    if rank is not None and axis < 0:
        axis += rank
    for use in dq.outputs[0].uses():
        user, slot = use.node, use.idx
        if user.op_type not in COMPUTE_OPS or slot != 1 or rank is None:
            continue
        want = _output_channel_axis(user, rank)
        if want is not None and axis != want:
            yield Violation(_name(dq), "weight-axis",
                            f"per-channel weights of {_name(user)} ({user.op_type}) are on axis {axis}; "
                            f"TensorRT needs axis {want} (output channels)")


def _output_channel_axis(node: ir.Node, rank: int) -> int | None:
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() == 1 else 1
    if op == "MatMul":
        return rank - 1
    return None


# --- compute ops, residual Adds, Concat ---------------------------------------------------------
def _check_compute(node: ir.Node) -> Iterator[Violation]:
    float_inputs = [
        f"input {i} '{v.name}'"
        for i, v in enumerate(node.inputs[:2])
        if v is not None and _dequantized_source(v) is None
    ]
    if float_inputs:
        yield Violation(_name(node), "inputs-quantized",
                        f"TensorRT runs {node.op_type} in int8 only when both its inputs are dequantized; "
                        f"{' and '.join(float_inputs)} {'is' if len(float_inputs) == 1 else 'are'} float",
                        WARNING)


def _check_add(node: ir.Node) -> Iterator[Violation]:
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return
    direct = [conv_producer(v) for v in node.inputs]
    through_qdq = [_conv_through_qdq(v) for v in node.inputs]
    if any(through_qdq) and not any(direct):
        conv = next(c for c in through_qdq if c is not None)
        yield Violation(_name(node), "conv-add-fusion",
                        f"Q/DQ between {_name(conv)} and this Add breaks TensorRT's Conv+Add fusion; "
                        "quantize only the residual input", WARNING)
        return
    if not any(direct):
        return
    residual = [v for v, c in zip(node.inputs, direct, strict=True) if c is None]
    if all(c is not None for c in direct):
        slot = residual_slot(node)
        residual = [node.inputs[slot if slot is not None else 1]]
    for value in residual:
        if value is not None and _dequantized_source(value) is None:
            conv = next(c for c in direct if c is not None)
            yield Violation(_name(node), "residual-quantized",
                            f"residual input '{value.name}' of the Add after {_name(conv)} is float; quantize it "
                            "so TensorRT fuses the Add into the convolution", WARNING)


def _check_concat(node: ir.Node) -> Iterator[Violation]:
    sources = [_dequantized_source(v) if v is not None else None for v in node.inputs]
    quantized = [dq for dq in sources if dq is not None]
    if not quantized:
        return
    if len(quantized) != len(sources):
        yield Violation(_name(node), "concat-scale",
                        "some Concat inputs are dequantized and some are float; TensorRT needs all inputs "
                        "quantized with one scale", WARNING)
        return
    params = [(_const(dq.inputs[1]), _const(dq.inputs[2]) if len(dq.inputs) > 2 else None) for dq in quantized]
    first_scale, _ = params[0]
    for (scale, _), dq in zip(params[1:], quantized[1:], strict=True):
        if first_scale is None or scale is None or not np.array_equal(first_scale, scale):
            yield Violation(_name(node), "concat-scale",
                            f"Concat inputs have different scales ({_name(quantized[0])}: {_show(first_scale)}, "
                            f"{_name(dq)}: {_show(scale)}); TensorRT needs one shared scale", WARNING)
            return


# --- helpers -------------------------------------------------------------------------------------
def _dequantized_source(value: ir.Value) -> ir.Node | None:
    """The DequantizeLinear behind ``value``, through ops TensorRT moves DQ across."""
    seen = 0
    while value is not None and seen < 32:
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "DequantizeLinear" and producer.domain in ("", "ai.onnx"):
            return producer
        if producer.op_type not in COMMUTING_OPS or not producer.inputs:
            return None
        value = producer.inputs[0]
        seen += 1
    return None


def _conv_through_qdq(value: ir.Value) -> ir.Node | None:
    dq = value.producer()
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
        return None
    q = dq.inputs[0].producer()
    if q is None or q.op_type != "QuantizeLinear" or q.inputs[0] is None:
        return None
    return conv_producer(q.inputs[0])


def _kind(node: ir.Node) -> str:
    """``weights`` when the Q/DQ acts on a constant (or Q(constant)), else ``activations``."""
    source = node.inputs[0]
    if source is None:
        return "activations"
    if _is_const(source):
        return "weights"
    producer = source.producer()
    if node.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "QuantizeLinear":
        return "weights" if _is_const(producer.inputs[0]) else "activations"
    return "activations"


def _is_const(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant, without reading its data."""
    if value is None or value.is_graph_input():
        return False
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def _weight_data(dq: ir.Node) -> np.ndarray | None:
    """The int8 weight a DQ reads (copied; a memory-mapped one is unmapped again)."""
    source = dq.inputs[0]
    tensor = source.const_value if source is not None else None
    if isinstance(tensor, ir.ExternalTensor):
        array = np.array(tensor.numpy(), copy=True)
        tensor.release()
        return array
    return _const(source)


def _quantized_type(node: ir.Node, zero: ir.Value | None) -> ir.DataType | None:
    """The integer type of a Q/DQ: its zero point's, else the DQ input's (uint8 when neither)."""
    if zero is not None and zero.dtype is not None:
        return zero.dtype
    if node.op_type == "DequantizeLinear" and node.inputs[0] is not None and node.inputs[0].dtype is not None:
        return node.inputs[0].dtype
    if node.op_type == "QuantizeLinear":
        attr = node.attributes.get("output_dtype")
        if attr is not None and attr.as_int() != 0:
            return ir.DataType(attr.as_int())
        # NOTE: QuantizeLinear without a zero point or output_dtype produces uint8.
        return ir.DataType.UINT8
    return None


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value if value.const_value is not None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy())


def _show(array: np.ndarray | None) -> str:
    if array is None:
        return "not constant"
    flat = array.ravel()
    text = ", ".join(f"{v:.6g}" for v in flat[:4])
    return f"[{text}{', ...' if flat.size > 4 else ''}]" if array.ndim else text


def _name(node: ir.Node) -> str:
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs and node.outputs[0].name else "?"
    return f"{node.op_type}({out})"
