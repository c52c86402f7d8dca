"""xnnpack: onnxruntime's XNNPACK execution provider (ARM and x86 mobile CPUs), signed 8-bit.

Rules from onnxruntime's XNNPACK EP source (``onnxruntime/core/providers/xnnpack/``, read at
commits b5bd7e2 / d6efbe4 / 6479e4b): ``detail/node_support_checker.cc``,
``detail/utils.cc`` (``GetQuantizedOpType``, ``GetTensorQuantType``), ``nn/conv_base.cc``
(``GetConvCompType``, ``IsValidQuantConv``), ``nn/max_pool.cc``, ``nn/average_pool.cc``,
``math/softmax.cc``:

- Ops it takes: Conv, ConvTranspose, MaxPool, AveragePool, Softmax, Resize, Gemm, MatMul in float;
  as QDQ node units only Conv, ConvTranspose, MaxPool, AveragePool, Softmax, Resize (Gemm and
  MatMul take float only). Relu / Clip fuse into a float Conv / MaxPool / AveragePool it took;
  a QDQ unit absorbs them only through the Q's range (onnxruntime's level-1 Relu/ClipQuantFusion).
- Quantized Conv: ``qc8`` (int8 activations per-tensor, int8 weights per-channel with zero point
  0), ``qs8`` (all int8 per-tensor) or ``qu8`` (all uint8 per-tensor); **no u8s8** (uint8
  activations with int8 weights, what onnxruntime CPU runs): such a Conv stays on the CPU EP. Bias
  int32 and constant, weights constant and 4-D, input 4-D with C, H, W known, ``auto_pad``
  NOTSET / VALID / SAME_UPPER.
- MaxPool: uint8 or int8, input and output alike. Softmax: uint8 only (output at scale 1/256,
  zero point 0); quantized AveragePool: switched off on onnxruntime's main since its XNNPACK upgrade
  of July 2025 (uint8 only before). With int8 activations both stay float, which XNNPACK runs.
- Float rules: pools 2-D, ``ceil_mode`` 0, no 1x1 kernel, AveragePool without
  ``count_include_pad`` or dilations; Resize linear with asymmetric / half_pixel / align_corners /
  pytorch_half_pixel coordinates; Gemm with alpha = beta = 1; MatMul with a constant B of rank <= 2
  (a helper's reading of onnxruntime main at 735e69a, Feb 2026, cross-checked with the above).
- Every other op, and a Q / DQ outside a node unit, runs on the CPU EP.

So the profile is ``qc8``: int8 asymmetric activations, int8 symmetric per-channel Conv weights
(per-tensor for ConvTranspose), input shapes fixed to the calibration samples' (``quantize``). The XNNPACK EP is not in onnxruntime's Linux x86 wheel:
``onnxq check --target xnnpack`` applies these rules to the graph (:func:`partition`), and the
self-check judges fidelity on the QDQ graph's reference arithmetic.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxq.ir.constants import constant_array
from onnxq.targets.base import Target, UnknownTargetError, register_target

NAME = "xnnpack"
#: Ops XNNPACK takes in float (node_support_checker.cc).
FLOAT_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Softmax", "Resize", "Gemm", "MatMul"})
#: Ops it takes as QDQ node units (utils.cc, GetQuantizedOpType).
QDQ_UNITS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Softmax", "Resize"})
#: Ops fused into a float Conv / MaxPool / AveragePool it took (ClipReluChecker).
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
_POOL_LIKE = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool"})
NOTES = {
    "Conv": "QDQ unit on XNNPACK (qc8): int8 activations, int8 weights per-channel with zero point 0, int32 bias",
    "ConvTranspose": "QDQ unit on XNNPACK (qs8): int8 per-tensor weights",
    "MaxPool": "runs on int8 with its input's scale",
    "AveragePool": "float on XNNPACK: its quantized form takes uint8 only",
    "Softmax": "float on XNNPACK: its quantized form takes uint8 with output scale 1/256 only",
    "Gemm": "float on XNNPACK: it has no quantized Gemm",
    "MatMul": "float on XNNPACK: it has no quantized MatMul",
    "*": "int8 activations; ops XNNPACK has no kernel for run on the CPU EP",
}
NOTE = ("XNNPACK through onnxruntime's XNNPACK EP (qc8): int8 activations, int8 per-channel Conv weights with "
        "zero point 0; Gemm / MatMul / AveragePool / Softmax float")


def xnnpack_target(cpu: str | None = None) -> Target:
    """The XNNPACK profile; ``cpu`` does not apply (XNNPACK picks its kernels on the device)."""
    if cpu is not None:
        raise UnknownTargetError(f"target {NAME} picks its kernels on the device; --cpu {cpu} does not apply to it")
    return Target(
        name=NAME,
        activation_dtype=ir.DataType.INT8,
        activation_symmetric=False,
        weight_dtype=ir.DataType.INT8,
        weight_symmetric=True,
        reduce_range=False,
        per_channel=True,
        min_per_channel_opset=13,
        min_qdq_opset=10,
        integer_ops=frozenset({"Conv", "ConvTranspose"}),
        output_optional_ops=frozenset(),
        anchor_ops=frozenset({"Conv", "ConvTranspose"}),
        data_movement_ops=frozenset({"MaxPool"}),
        absorbed_ops=frozenset({"Relu", "Clip"}),
        float_ops=frozenset({"AveragePool", "GlobalAveragePool", "Softmax", "Gemm", "MatMul"}),
        quantize_graph_outputs=False,
        # NOTE: its Conv / pool kernels are built before running, from C, H and W: dynamic spatial dims
        # keep them on the CPU (YOLOv8n exported with dynamic height / width: 3/323 nodes as exported)
        static_shapes=True,
        float_nodes_run=True,
        wider_activations=None,
        gelu_form="onnx",
        requires_bias_int32=True,
        cpu=None,
        cpu_note=NOTE,
        notes=NOTES,
    )


register_target(NAME, xnnpack_target)


# --- which nodes the EP takes ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Left:
    """A node XNNPACK does not take, and why."""

    node: str
    op: str
    reason: str


@dataclasses.dataclass
class Partition:
    """The main graph's compute nodes (Q/DQ of node units not counted) and those XNNPACK takes."""

    nodes: int
    taken: int
    left: list[Left]

    def summary(self) -> str:
        return f"{self.taken}/{self.nodes} nodes on XNNPACK (by its EP's rules; Q/DQ of node units not counted)"


def _producer(value: ir.Value | None, op: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None


def _qtype(qdq: ir.Node) -> tuple[str, bool, bool] | None:
    """(dtype name, per-channel, zero points all 0) of a Q/DQ with constant parameters."""
    scale = constant_array(qdq.inputs[1]) if len(qdq.inputs) > 1 else None
    zero = constant_array(qdq.inputs[2]) if len(qdq.inputs) > 2 and qdq.inputs[2] is not None else None
    if scale is None:
        return None
    dtype = zero.dtype.name if zero is not None else "uint8"
    return dtype, scale.size > 1, zero is None or not np.any(zero)


def _output_q(node: ir.Node) -> ir.Node | None:
    """The Q the node's output goes to alone, through an absorbed Relu / Clip."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    reader = uses[0].node
    if reader.op_type in FUSED_ACTIVATIONS and len(list(reader.outputs[0].uses())) == 1:
        reader = next(iter(reader.outputs[0].uses())).node
    return reader if reader.op_type == "QuantizeLinear" else None


def _shape_reason(node: ir.Node, quantized: bool) -> str | None:
    op = node.op_type
    if op not in _POOL_LIKE:
        return None
    x = node.inputs[0]
    if x is None or x.shape is None or len(x.shape) != 4:
        return "XNNPACK takes 2-D spatial ops only (4-D input with a known rank)"
    if any(not isinstance(d, int) or d < 0 for d in list(x.shape)[1:]):
        return f"input '{x.name}' has unknown C / H / W ({x.shape}): XNNPACK builds its kernel before running"
    if op in ("Conv", "ConvTranspose"):
        w = node.inputs[1]
        w_node = _producer(w, "DequantizeLinear")
        if w_node is not None and not quantized:
            return ("weights come through a DequantizeLinear but the output is not quantized: neither a QDQ "
                    "node unit nor a float op with constant weights")
        weight = constant_array(w_node.inputs[0] if w_node is not None else w)
        if weight is None or weight.ndim != 4:
            return "weights are not a constant 4-D tensor"
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b_node = _producer(node.inputs[2], "DequantizeLinear")
            if constant_array(b_node.inputs[0] if b_node is not None else node.inputs[2]) is None:
                return "bias is not constant"
    pad = node.attributes.get_string("auto_pad", "NOTSET") if "pads" not in node.attributes else "NOTSET"
    if pad not in ("NOTSET", "VALID", "SAME_UPPER"):
        return f"auto_pad {pad}: XNNPACK takes NOTSET, VALID or SAME_UPPER"
    if op in ("MaxPool", "AveragePool"):
        kernel = node.attributes.get_ints("kernel_shape", [])
        if node.attributes.get_int("ceil_mode", 0) != 0:
            return "ceil_mode 1: XNNPACK pools take ceil_mode 0"
        if len(kernel) != 2 or list(kernel) == [1, 1]:
            return f"kernel {list(kernel)}: XNNPACK pools take 2-D kernels other than 1x1"
        if op == "AveragePool" and (node.attributes.get_int("count_include_pad", 0) != 0
                                    or any(d != 1 for d in node.attributes.get_ints("dilations", []))):
            return "AveragePool with count_include_pad 1 or dilations: XNNPACK takes neither"
    return None


def _float_op_reason(node: ir.Node) -> str | None:
    """Attribute rules of the float ops that are not spatial (resize.cc, gemm.cc, matmul.cc)."""
    op = node.op_type
    if op == "Resize":
        mode = node.attributes.get_string("mode", "nearest")
        coord = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
        if mode != "linear":
            return f"Resize mode {mode}: XNNPACK resizes linear only"
        if coord not in ("asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel"):
            return f"Resize coordinate_transformation_mode {coord}: XNNPACK does not take it"
    if op == "Gemm" and (node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0):
        return "Gemm with alpha or beta other than 1: XNNPACK takes neither"
    if op == "MatMul":
        b = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if b is not None and b.ndim > 2:
            return f"MatMul with a rank-{b.ndim} B: XNNPACK takes B of rank 1 or 2"
    return None


def _quantized_reason(node: ir.Node, x_dq: ir.Node, q: ir.Node) -> str | None:
    op = node.op_type
    x, y = _qtype(x_dq), _qtype(q)
    if x is None or y is None:
        return "quantization parameters are not constant"
    if x[1] or y[1]:
        return "activations must be quantized per-tensor"
    if op in ("Conv", "ConvTranspose"):
        w_dq = _producer(node.inputs[1], "DequantizeLinear")
        w = _qtype(w_dq) if w_dq is not None else None
        if w is None:
            return "weights are not a constant read through a DequantizeLinear"
        kinds = {("int8", "int8", "int8"): "qs8", ("uint8", "uint8", "uint8"): "qu8"}
        kind = kinds.get((x[0], w[0], y[0]))
        if kind is None:
            combo = f"{x[0]} activations with {w[0]} weights and {y[0]} output"
            return f"{combo}: XNNPACK runs int8/int8 (qs8, qc8) or uint8/uint8 (qu8) only, no u8s8"
        if w[1] and (kind != "qs8" or not w[2]):
            return "per-channel weights need int8 activations and zero point 0 (qc8)"
        if w[1] and op == "ConvTranspose":
            return "ConvTranspose takes per-tensor weights only (no qc8 QLinearConvTranspose)"
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b_dq = _producer(node.inputs[2], "DequantizeLinear")
            bias = constant_array(b_dq.inputs[0]) if b_dq is not None else None
            if bias is None or bias.dtype != np.int32:
                return "bias must be a constant int32 read through a DequantizeLinear"
        return None
    if op in ("MaxPool", "Resize"):
        return None if x[0] == y[0] and x[0] in ("int8", "uint8") else "input and output must share one 8-bit type"
    if op == "AveragePool":
        # NOTE: onnxruntime's main since its XNNPACK upgrade (July 2025): IsQuantAvgPoolSupported returns
        # false; before it, uint8 only
        return "XNNPACK's quantized AveragePool is switched off in current onnxruntime (uint8 only before)"
    # Softmax
    scale = constant_array(q.inputs[1])
    if x[0] != "uint8" or y[0] != "uint8" or scale is None or abs(float(scale.reshape(-1)[0]) - 1 / 256) > 1e-4:
        return "its quantized form takes uint8 with output scale 1/256 and zero point 0 only"
    return None


def partition(model: ir.Model) -> Partition:
    """Which main-graph nodes XNNPACK's EP would take (see the module docstring).

    Q/DQ nodes are not counted: those of a node unit go with it; a lone one (the graph input's Q)
    runs on the CPU EP, as onnxruntime's node-unit grouping leaves it. Shapes are inferred first
    (onnx's inference, as onnxruntime's NodeArgs have them when the EP is asked).
    """
    import onnx.shape_inference

    model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))
    graph = model.graph
    taken_units: set[ir.Node] = set()
    left: list[Left] = []
    nodes = 0
    taken = 0
    float_taken: set[ir.Node] = set()
    for node in graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        nodes += 1
        op = node.op_type
        name = node.name or op
        if node.domain not in ("", "ai.onnx"):
            left.append(Left(name, op, f"{node.domain}.{op} is not an ONNX op XNNPACK knows"))
            continue
        if op in FUSED_ACTIVATIONS:
            src = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if src in float_taken and src is not None and src.op_type in _POOL_LIKE:
                taken += 1
                continue
            if src in taken_units and any(u.node.op_type == "QuantizeLinear" for u in node.outputs[0].uses()):
                taken += 1  # NOTE: removed by the Q's range at level 1 (Relu/ClipQuantFusion)
                continue
            left.append(Left(name, op, "fuses only into a Conv / MaxPool / AveragePool that XNNPACK took"))
            continue
        if op not in FLOAT_OPS:
            left.append(Left(name, op, f"XNNPACK has no {op} kernel"))
            continue
        x_dq = _producer(node.inputs[0] if node.inputs else None, "DequantizeLinear")
        q = _output_q(node) if x_dq is not None else None
        # NOTE: a DQ input without a Q output is no node unit: the DQ runs alone on the CPU EP and
        # the op is judged as a float op (onnxruntime's GetAllNodeUnits)
        quantized = q is not None and op in QDQ_UNITS
        reason = _shape_reason(node, quantized)
        if reason is None and quantized:
            assert x_dq is not None and q is not None
            reason = _quantized_reason(node, x_dq, q)
            if reason is None:
                taken_units.add(node)
        elif reason is None:
            x = node.inputs[0]
            if op in ("Gemm", "MatMul") and any(_producer(v, "DequantizeLinear") for v in node.inputs):
                reason = f"XNNPACK takes {op} in float only: with Q/DQ around it, it runs on the CPU EP"
            elif x is not None and x.dtype is not None and x.dtype != ir.DataType.FLOAT:
                reason = f"{x.dtype.name.lower()} input: XNNPACK takes float or QDQ node units"
            elif op in ("Gemm", "MatMul") and constant_array(node.inputs[1]) is None:
                reason = "input B is not a constant initializer"
            elif (why := _float_op_reason(node)) is not None:
                reason = why
            else:
                float_taken.add(node)
        if reason is None:
            taken += 1
        else:
            left.append(Left(name, op, reason))
    return Partition(nodes, taken, left)
