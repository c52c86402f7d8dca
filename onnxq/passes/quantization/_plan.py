"""Where QDQ goes: the placement plan shared by ``insert-qdq`` and ``tensors_to_calibrate``.

Hand-written: neither onnx_ir nor onnxscript knows where an execution provider fuses QDQ, and
onnxruntime's quantizer places QDQ around every supported op whether or not a kernel fuses it.
The plan reads the target's rule data and decides, on the main graph:

1. Eligible integer-kernel nodes: selected, float activations, constant weights (Conv, Gemm),
   Gemm with alpha = beta = 1 and a 1-D bias, finite constant operands.
2. Anchors (Conv, MatMul, Gemm) are quantized wherever eligible; the other integer ops (Add,
   Concat, Softmax...) only when one of their activations is already quantized (or reachable
   through int8 data movement) or their output must be quantized for a consumer. A lone Add
   between float ops would buy a QLinearAdd with four Q/DQ: not emitted.
3. Quantized tensors: activation inputs of quantized nodes; outputs of quantized nodes that need
   an output Q (all but MatMul/Gemm, which fuse with float output too); a Relu/Clip that is the
   single consumer of a quantized op is absorbed (the Q goes after it, on its range).
4. Data movement (Reshape, Transpose, MaxPool...): an output that must be quantized makes its
   input quantized too, and shares its scale and zero point, so ORT drops the Q/DQ around it.
5. Graph outputs are not quantized unless the producer is a Conv-like op that needs an output Q.

Ranges come from the "root" of each shared group; those roots are what calibration observes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection

import numpy as np
import onnx_ir as ir

from onnxq.passes.quantization._common import (
    Selection,
    constant_array,
    constant_meta,
    inferred_dtypes,
    is_constant,
    is_float,
    resolve_constant,
)
from onnxq.targets.base import BIAS_INPUT, WEIGHT_INPUT, Target


@dataclasses.dataclass
class Plan:
    """The placement decided for one model.

    Attributes:
        quantized: Integer-kernel nodes that get QDQ, in graph order.
        tensors: Activation values that get a Q (and DQs), in graph order.
        root: For each quantized value, the value whose calibrated range it uses (itself, or the
            input of the data-movement chain it shares scale and zero point with).
        constants: (node, input slot) of constant operands quantized like activations.
        clip_bounds: Clip outputs whose Q must lie inside the Clip's bounds.
        left_float: Integer-kernel nodes left in float, with the reason.
    """

    quantized: list[ir.Node]
    tensors: list[ir.Value]
    root: dict[ir.Value, ir.Value]
    constants: list[tuple[ir.Node, int]]
    clip_bounds: dict[ir.Value, tuple[float, float]]
    left_float: dict[ir.Node, str]

    def range_tensors(self) -> list[str]:
        """Names of the values whose ranges the plan needs (sorted, unique)."""
        return sorted({v.name for v in self.root.values() if v.name})


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    lo, hi = -math.inf, math.inf
    if "min" in node.attributes or "max" in node.attributes:  # opset < 11
        if "min" in node.attributes:
            lo = node.attributes["min"].as_float()
        if "max" in node.attributes:
            hi = node.attributes["max"].as_float()
    for slot in (1, 2):
        if len(node.inputs) > slot and node.inputs[slot] is not None:
            array = constant_array(node.inputs[slot])
            if array is None or array.size != 1:
                return None
            if slot == 1:
                lo = float(array.reshape(()))
            else:
                hi = float(array.reshape(()))
    return lo, hi


def gemm_bias_vector(
    node: ir.Node, weight_shape: tuple[int, ...] | None, bias: np.ndarray
) -> np.ndarray | None:
    """The bias as a 1-D vector over output channels, or None when it is not one.

    Conv needs ``[C_out]``; Gemm also takes a scalar or ``[1, N]`` bias (the same broadcast).
    """
    if node.op_type != "Gemm" or weight_shape is None or len(weight_shape) != 2:
        return bias if bias.ndim == 1 else None
    trans_b = node.attributes.get("transB")
    n = weight_shape[0] if trans_b is not None and trans_b.as_int() == 1 else weight_shape[1]
    if bias.size == 1 and bias.ndim <= 2:
        return np.broadcast_to(bias.reshape(-1), (n,)).copy()
    if bias.ndim == 1 and bias.shape[0] == n:
        return bias
    if bias.ndim == 2 and bias.shape == (1, n):
        return bias.reshape(n)
    return None


#: Ops a magnitude flows through unchanged in kind (squares, sums, means, eps, layout).
_MAGNITUDE_PATH = frozenset({"Mul", "Pow", "Add", "Abs", "Neg", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                             "ReduceL2", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Relu", "Max", "Clip",
                             "Identity", "Concat", "Slice", "Pad"})
#: Ops whose result depends on the relative precision of small inputs: 8-bit steps sized for the
#: largest values turn the small ones into 0 (log 0, 1 / sqrt(eps)).
_MAGNITUDE_SENSITIVE = frozenset({"Sqrt", "Log", "Reciprocal"})


def feeds_magnitude_sensitive(node: ir.Node, depth: int = 8) -> str | None:
    """The op that makes ``node``'s output need relative precision, or None.

    Follows the output through squares, sums, means, an eps and layout ops to a Sqrt, Log,
    Reciprocal or a Div's divisor: LayerNorm statistics written out (variance + eps -> Sqrt) and
    signal-processing front ends (a fixed-kernel Conv -> square -> log) stay float.
    """
    frontier = [o for o in node.outputs]
    seen: set[int] = set()
    for _ in range(depth):
        following = []
        for value in frontier:
            for use in value.uses():
                user = use.node
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if user.op_type in _MAGNITUDE_SENSITIVE or (user.op_type == "Div" and use.idx == 1):
                    return user.op_type if user.op_type != "Div" else "Div (as the divisor)"
                if user.op_type in _MAGNITUDE_PATH:
                    following.extend(user.outputs)
        frontier = following
        if not frontier:
            break
    return None


#: Ops of a linear signal-processing front end (filters, framing, layout) before its magnitude.
_FRONT_END_LINEAR = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Pad", "Reshape", "Transpose", "Squeeze",
                               "Unsqueeze", "Slice", "Concat", "Split", "Neg", "Mul", "Add", "Sub", "Identity",
                               "Flatten", "Expand"})


def signal_front_end(graph: ir.Graph) -> set[ir.Node]:
    """The nodes of a linear front end whose output reaches a Sqrt, Log or Reciprocal.

    The front end is what the graph inputs flow through before the first nonlinearity: fixed-kernel
    Conv / MatMul filters (STFT, constant-Q, mel banks as strided convolutions), framing and layout.
    When its output goes on to a magnitude (square, sum, sqrt, log), every filter of the chain
    needs the relative precision of small values: an 8-bit step sized for the loudest band erases
    the quiet ones, and the error grows through each stage (measured on a constant-Q front end:
    7 dB after the third filter). A network's own first Conv is in the front end too, but its
    output meets an activation before any Sqrt, so it is not returned.
    """
    inputs = {id(v) for v in graph.inputs}
    region: set[ir.Node] = set()
    for node in graph:  # NOTE: topological order: producers first.
        if node.op_type not in _FRONT_END_LINEAR:
            continue
        dynamic = [v for v in node.inputs if v is not None and not is_constant(v)]
        if dynamic and all(id(v) in inputs or v.producer() in region for v in dynamic):
            region.add(node)
    reached: set[ir.Node] = set()
    if not region:
        return reached
    stack = [n for n in graph if n.op_type in _MAGNITUDE_SENSITIVE]
    visited: set[ir.Node] = set()
    while stack:
        for value in stack.pop().inputs:
            producer = value.producer() if value is not None else None
            if producer is None or producer in visited:
                continue
            if producer in region or producer.op_type in _MAGNITUDE_PATH:
                visited.add(producer)
                stack.append(producer)
                if producer in region:
                    reached.add(producer)
    return reached


def _eligible(node: ir.Node, target: Target, flt: Callable[[ir.Value | None], bool]) -> str | None:
    """None when ``node`` can run on the target's integer kernel; else the reason it cannot."""
    slots = target.activation_inputs(node)
    op = node.op_type
    if not node.outputs or not all(flt(o) for o in node.outputs if o.uses() or o.is_graph_output()):
        return "output is not float32"
    sensitive = feeds_magnitude_sensitive(node)
    if sensitive is not None:
        return (f"its output reaches a {sensitive} through squares/sums, which needs the relative precision of "
                "small values (normalization statistics, log spectra)")
    acts = [node.inputs[i] for i in slots]
    weight_slot = WEIGHT_INPUT.get(op)
    if weight_slot is not None and len(node.inputs) > weight_slot:
        acts_and_weight = [*acts, node.inputs[weight_slot]]
    else:
        acts_and_weight = acts
    for value in acts_and_weight:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type in ("DequantizeLinear", "QuantizeLinear"):
            return "already quantized (an input comes from a DequantizeLinear)"
    if any(u.node.op_type == "QuantizeLinear" for o in node.outputs for u in o.uses()):
        return "already quantized (its output goes to a QuantizeLinear)"
    for value in acts:
        if value is None:
            continue
        if not flt(value):
            return f"input '{value.name}' is not float32 (type unknown or not float; run infer-shapes)"
        array = constant_array(value) if op not in WEIGHT_INPUT and is_constant(value) else None
        if array is not None and not bool(np.isfinite(array).all() and np.abs(array).max(initial=0) < 1e30):
            return f"constant input '{value.name}' is not finite"
    if all(is_constant(v) for v in acts if v is not None) and op not in WEIGHT_INPUT:
        return "all inputs are constant"
    if op in WEIGHT_INPUT:
        uses = node.outputs[0].uses()
        if any(u.node.op_type in ("BatchNormalization", "InstanceNormalization") for u in uses):
            # NOTE: one per-tensor scale before a BatchNorm loses the channels BN scales up
            # (measured: SQNR 5 dB on a Paddle detector); fold the BatchNorm first (fold-batchnorm).
            return f"output feeds a {uses[0].node.op_type} that is not folded into the weights"
        if is_constant(node.inputs[0]):
            return "activation input is constant"
        weight = node.inputs[WEIGHT_INPUT[op]] if len(node.inputs) > WEIGHT_INPUT[op] else None
        meta = constant_meta(weight)
        if op in ("Conv", "Gemm"):
            if meta is None:
                return "weight is not constant"
            if meta[0] != "f":
                return "weight is not float"
        if op == "MatMul" and meta is None and not flt(weight):
            return "second input is not float32"
        if op == "MatMul" and any(
            v is not None and v.shape is not None and len(v.shape) < 2 for v in node.inputs[:2]
        ):
            return "1-D MatMul operand"
        if op == "MatMul" and meta is not None and len(meta[1]) < 2:
            return "1-D MatMul operand"
        bias_slot = BIAS_INPUT.get(op)
        if bias_slot is not None and len(node.inputs) > bias_slot and node.inputs[bias_slot] is not None:
            bias = resolve_constant(node.inputs[bias_slot])
            if bias is None or gemm_bias_vector(node, meta[1] if meta else None, bias) is None:
                return "bias is not a constant 1-D tensor (or [1, N] for Gemm)"
        if op == "Gemm":
            alpha = node.attributes.get("alpha")
            beta = node.attributes.get("beta")
            if alpha is not None and alpha.as_float() != 1.0:
                return "Gemm alpha != 1 stays float in onnxruntime"
            if (
                beta is not None
                and beta.as_float() != 1.0
                and len(node.inputs) > 2
                and node.inputs[2] is not None
            ):
                return "Gemm beta != 1 with a bias"
        if op == "Conv" and (meta is None or len(meta[1]) < 3):
            return "weight rank is below 3"
    return None


def _group_output(
    node: ir.Node, target: Target, selection: Selection, flt: Callable[[ir.Value | None], bool]
) -> tuple[ir.Value, ir.Node | None]:
    """The tensor a quantized node's output Q goes on: after a lone absorbable Relu/Clip."""
    out = node.outputs[0]
    uses = out.uses()
    if out.is_graph_output() or len(uses) != 1:
        return out, None
    user = uses[0].node
    if user.op_type not in target.absorbed_ops or user.domain not in ("", "ai.onnx") or uses[0].idx != 0:
        return out, None
    if user.graph is not node.graph or not selection.selects(user) or not flt(user.outputs[0]):
        return out, None
    if user.op_type == "Clip":
        bounds = _clip_bounds(user)
        if bounds is None or not (bounds[0] <= 0.0 <= bounds[1]):
            return out, None
    return user.outputs[0], user


def make_plan(
    model: ir.Model,
    target: Target,
    selection: Selection,
    *,
    forbidden: Collection[ir.Value] = (),
    blocked: Collection[ir.Node] = (),
) -> Plan:
    """Decides placement on the main graph. ``forbidden`` values may not be quantized (no range);
    ``blocked`` nodes stay float."""
    graph = model.graph
    dtypes = inferred_dtypes(model)

    def flt(value: ir.Value | None) -> bool:
        return is_float(value, dtypes)

    order = {node: i for i, node in enumerate(graph)}
    left_float: dict[ir.Node, str] = {}
    candidates: list[ir.Node] = []
    front_end = signal_front_end(graph)
    for node in graph:
        if not target.is_integer_op(node):
            continue
        if not selection.selects(node):
            left_float[node] = ("excluded by the include/exclude options (given, or added by a guard rung: "
                                "mixed precision, measured placement)")
            continue
        if node in blocked:
            left_float[node] = "a tensor it needs has no calibrated range"
            continue
        if any(o.dtype is not None and o.dtype != ir.DataType.FLOAT for o in node.outputs):
            continue  # integer/bool arithmetic (shape computations): not a quantization candidate
        if node in front_end:
            left_float[node] = ("part of a linear signal-processing front end whose output reaches a magnitude "
                                "(Sqrt/Log): its filters need the relative precision of small values (quiet bands)")
            continue
        reason = _eligible(node, target, flt)
        if reason is not None:
            left_float[node] = reason
            continue
        candidates.append(node)

    def activations(node: ir.Node) -> list[ir.Value]:
        return [
            v
            for i in target.activation_inputs(node)
            if (v := node.inputs[i]) is not None and not is_constant(v)
        ]

    def output_required(node: ir.Node) -> bool:
        return node.op_type not in target.output_optional_ops

    def movable(node: ir.Node) -> bool:
        return (
            node.graph is graph
            and target.is_data_movement(node)
            and selection.selects(node)
            and flt(node.inputs[0])
            and not is_constant(node.inputs[0])
        )

    groups = {node: _group_output(node, target, selection, flt) for node in candidates}
    quantized = {n for n in candidates if n.op_type in target.anchor_ops}
    followers = [n for n in candidates if n.op_type not in target.anchor_ops]

    def blocked_output(value: ir.Value) -> bool:
        return value in forbidden or (value.is_graph_output() and not target.quantize_graph_outputs)

    removed: set[ir.Node] = set()
    while True:
        need: set[ir.Value] = set()
        for node in quantized:
            need.update(activations(node))
            out, _ = groups[node]
            if output_required(node):
                need.add(out)
        # Data movement: a quantized output makes its input quantized (shared parameters),
        # unless that input has no range.
        stack = list(need)
        while stack:
            value = stack.pop()
            producer = value.producer()
            if producer is not None and movable(producer):
                source = producer.inputs[0]
                if source not in need and source not in forbidden:
                    need.add(source)
                    stack.append(source)
        # A node that needs a value without a range stays float (and is not retried).
        bad = need & set(forbidden)
        dropped = [
            node
            for node in quantized
            if any(v in bad for v in activations(node)) or (output_required(node) and groups[node][0] in bad)
        ]
        if dropped:
            for node in dropped:
                quantized.discard(node)
                removed.add(node)
                left_float[node] = "a tensor it needs has no calibrated range"
            continue
        # Values available cheaply in int8: quantized ones and data-movement outputs of them.
        available = set(need)
        for node in graph:
            if movable(node) and node.inputs[0] in available:
                available.update(o for o in node.outputs if flt(o))
        grown = [
            node
            for node in followers
            if node not in quantized
            and node not in removed
            and not blocked_output(groups[node][0])
            and (any(v in available for v in activations(node)) or groups[node][0] in need)
        ]
        if not grown:
            break
        quantized.update(grown)

    root: dict[ir.Value, ir.Value] = {}

    def root_of(value: ir.Value) -> ir.Value:
        if value in root:
            return root[value]
        producer = value.producer()
        if producer is not None and movable(producer) and producer.inputs[0] in need:
            result = root_of(producer.inputs[0])
        else:
            result = value
        root[value] = result
        return result

    def position(value: ir.Value) -> tuple[int, int]:
        producer = value.producer()
        if producer is None or producer.graph is not graph:
            inputs = list(graph.inputs)
            return (-1, inputs.index(value) if value in inputs else 0)
        return (order[producer], value.index() or 0)

    tensors = sorted((v for v in need if v.name is not None), key=position)
    for value in tensors:
        root_of(value)
    clip_bounds: dict[ir.Value, tuple[float, float]] = {}
    for node in quantized:
        out, absorbed = groups[node]
        if absorbed is not None and absorbed.op_type == "Clip" and out in need:
            bounds = _clip_bounds(absorbed)
            if bounds is not None:
                clip_bounds[out] = bounds
    quantized_list = sorted(quantized, key=order.__getitem__)
    for node in quantized_list:
        left_float.pop(node, None)
    constants = [
        (node, i)
        for node in quantized_list
        if node.op_type not in WEIGHT_INPUT
        for i in target.activation_inputs(node)
        if node.inputs[i] is not None and is_constant(node.inputs[i])
    ]
    for node in candidates:
        if node not in quantized and node not in left_float:
            left_float[node] = "no quantized neighbour: QDQ around it alone would cost more than it saves"
    return Plan(quantized_list, tensors, root, constants, clip_bounds, left_float)


def plan_with_ranges(
    model: ir.Model, target: Target, selection: Selection, has_range: Collection[str] | None
) -> tuple[Plan, list[str]]:
    """The plan, re-made until every root it needs has a range; also the names that had none."""
    forbidden: set[ir.Value] = set()
    missing: list[str] = []
    for _ in range(len(model.graph) + 1):
        plan = make_plan(model, target, selection, forbidden=forbidden)
        if has_range is None:
            return plan, missing
        lacking = {r for r in plan.root.values() if r.name not in has_range}
        if not lacking:
            return plan, missing
        missing.extend(sorted(v.name or "" for v in lacking))
        forbidden |= lacking
    return plan, missing
