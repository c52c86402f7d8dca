"""quantize-weights: int8 weight initializers + DequantizeLinear, int32 biases, for quantized ops.

Runs after ``insert-qdq``. Quantizes the weight of each Conv / Gemm / MatMul whose activation
input is read through a DequantizeLinear (a weight-only DQ -> MatMul would become onnxruntime's
MatMulNBits with on-the-fly int8 activations, and DQ -> Conv/Gemm stays float: no gain). Weights
behind Identity / Cast / Reshape / Constant are folded into the new initializer. Per-channel on
the axis the target's kernel fuses (Conv 0, MatMul N, Gemm by transB), per-tensor on request or
below opset 13 (said in a diagnostic). Biases become int32 with scale ``x_scale * w_scale``; when a
bias would overflow int32 the weight scale of that channel is inflated until it fits (and a
warning names the node). Hand-written: onnxruntime's quantizer needs weights to be initializers
on the node itself and works on protobuf.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext
from onnxq.passes.quantization._common import (
    NameScope,
    Selection,
    along_axis,
    constant_array,
    make_initializer,
    make_node,
    resolve_constant,
    round_to_grid,
    weight_scales,
)
from onnxq.passes.quantization._plan import gemm_bias_vector
from onnxq.targets.base import BIAS_INPUT, WEIGHT_INPUT, Target

INT32_LIMIT = 2**31 - 1
#: Bias quantization keeps this much headroom below the int32 limit (accumulator adds products).
BIAS_HEADROOM = 0.5


class QuantizeWeights(Pass):
    """int8 weights (per-channel or per-tensor) and int32 biases for QDQ-quantized ops."""

    name: ClassVar[str] = "quantize-weights"
    summary: ClassVar[str] = (
        "Quantize weights to int8 (+DequantizeLinear) and biases to int32 for quantized ops"
    )
    needs: ClassVar[tuple[type, ...]] = (Target,)

    @dataclasses.dataclass(frozen=True)
    class Options:
        per_channel: bool = dataclasses.field(
            default=True, metadata={"help": "per-channel scales on the kernel's output axis (opset >= 13)"}
        )
        include: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "only nodes matching these names, op types or regexes"}
        )
        exclude: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "leave the weights of matching nodes in float"}
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        return quantize_weights(
            model,
            target,
            per_channel=self.options.per_channel,
            selection=Selection(self.options.include, self.options.exclude),
            pass_name=self.name,
        )


@dataclasses.dataclass
class _Quantized:
    value: ir.Value  # the DQ output feeding the node
    scale: np.ndarray  # weight scale (scalar or per channel), float32
    axis: int | None


def _dq_input(value: ir.Value | None) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain not in ("", "ai.onnx"):
        return None
    return producer


def _output_quantized(node: ir.Node, target: Target) -> bool:
    """Whether the node's output goes to a QuantizeLinear (directly or after an absorbed Relu/Clip)."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return False
    user = uses[0].node
    if user.op_type in target.absorbed_ops and not user.outputs[0].is_graph_output():
        uses = user.outputs[0].uses()
        if len(uses) != 1:
            return False
        user = uses[0].node
    return user.op_type == "QuantizeLinear"


def quantize_weights(
    model: ir.Model, target: Target, *, per_channel: bool, selection: Selection, pass_name: str
) -> PassResult:
    """Quantizes the weights and biases of the quantized ops in ``model`` (see the module docstring)."""
    graph = model.graph
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    names = NameScope(model)
    diagnostics: list[Diagnostic] = []
    stats = {
        "weights_quantized": 0,
        "biases_quantized": 0,
        "per_tensor_fallbacks": 0,
        "weight_scales_inflated": 0,
        "dead_channels": 0,
    }
    use_axis = per_channel and target.per_channel
    if use_axis and opset < target.min_per_channel_opset:
        use_axis = False
        diagnostics.append(
            Diagnostic(
                f"opset {opset} < {target.min_per_channel_opset}: DequantizeLinear has no axis, weights per-tensor"
                " (convert the opset for per-channel weights)",
                Severity.WARNING,
            )
        )
        stats["per_tensor_fallbacks"] += 1
    qmin, qmax = target.weight_qrange()
    qlim = float(min(-qmin, qmax))
    cache: dict[tuple[int, int | None, bytes], ir.Value] = {}
    replaced: list[ir.Value] = []

    for node in list(graph):
        op = node.op_type
        if op not in WEIGHT_INPUT or not target.is_integer_op(node) or not selection.selects(node):
            continue
        act_dq = _dq_input(node.inputs[0])
        slot = WEIGHT_INPUT[op]
        weight = node.inputs[slot] if len(node.inputs) > slot else None
        if weight is None or _dq_input(weight) is not None:
            continue
        array = resolve_constant(weight)
        if array is None:
            continue  # an activation (MatMul of two tensors) or a computed weight
        if act_dq is None:
            diagnostics.append(
                Diagnostic(f"{op} weight left float: its activation input is not quantized", node=node.name)
            )
            continue
        if op not in target.output_optional_ops and not _output_quantized(node, target):
            # NOTE: DQ -> Conv without an output Q stays float in onnxruntime; int8 weights would
            # only add a DequantizeLinear per run.
            diagnostics.append(
                Diagnostic(f"{op} weight left float: its output is not quantized", node=node.name)
            )
            continue
        if array.dtype.kind != "f":
            continue
        w = array.astype(np.float32)
        axis = target.weight_axis(node, w.ndim) if use_axis else None
        x_scale_array = constant_array(act_dq.inputs[1]) if len(act_dq.inputs) > 1 else None
        if x_scale_array is None or x_scale_array.size != 1:
            diagnostics.append(
                Diagnostic(
                    f"{op} weight left float: activation scale is not a constant scalar", node=node.name
                )
            )
            continue
        x_scale = float(x_scale_array.reshape(()))

        scale = weight_scales(w, (axis,) if axis is not None else (), qlim)

        bias_slot = BIAS_INPUT.get(op)
        bias_value = (
            node.inputs[bias_slot] if bias_slot is not None and len(node.inputs) > bias_slot else None
        )
        bias = (
            resolve_constant(bias_value) if bias_value is not None and _dq_input(bias_value) is None else None
        )
        if bias is not None and not target.requires_bias_int32:
            bias = None  # the target (TensorRT) wants the bias float
        if bias is not None:
            bias = gemm_bias_vector(node, w.shape, bias) if bias.dtype.kind == "f" else None
        if bias is not None and axis is not None and bias.shape[0] != scale.shape[0]:
            bias = None  # a broadcast bias cannot take per-channel scales; stays float
        if bias is not None:
            # NOTE: the int32 guard: inflate the weight scale of channels whose bias / (x_scale *
            # w_scale) would leave int32 (tiny weights and activation scales with a big bias).
            needed = (np.abs(bias.astype(np.float64)) / (x_scale * INT32_LIMIT * BIAS_HEADROOM)).astype(
                np.float32
            )
            if axis is None:
                needed = np.asarray(needed.max(initial=0.0), np.float32)
            inflated = needed > scale
            if inflated.any():
                factor = float(np.max(needed[inflated] / scale[inflated]) if scale.ndim else needed / scale)
                scale = np.maximum(scale, needed * np.float32(1.001)).astype(np.float32)
                stats["weight_scales_inflated"] += int(inflated.sum())
                if axis is not None and _dead(w, axis, inflated):
                    # NOTE: channels whose weights are ~0 (BatchNorm folding of a channel whose scale
                    # is ~0): their output is the bias either way, so raising the scale loses nothing
                    stats["dead_channels"] += int(inflated.sum())
                    diagnostics.append(Diagnostic(
                        f"{op}: {int(inflated.sum())} channel(s) with weights ~0 (their output is the bias): "
                        "weight scale raised so the int32 bias fits; nothing lost", Severity.INFO, node=node.name))
                else:
                    diagnostics.append(
                        Diagnostic(
                            f"{op} bias would overflow int32 at scale x_scale*w_scale; weight scale of "
                            f"{int(inflated.sum())} channel(s) inflated up to {factor:.3g}x",
                            Severity.WARNING,
                            node=node.name,
                        )
                    )

        q = round_to_grid(w, along_axis(scale, w.ndim, axis), 0, (qmin, qmax), target.weight_dtype.numpy())
        key = (id(weight), axis, scale.tobytes())
        base = weight.name or f"{node.name}_weight"
        if key not in cache:
            q_init = make_initializer(graph, names, f"{base}_quantized", q)
            s_init = make_initializer(graph, names, f"{base}_scale", scale)
            zp_init = make_initializer(
                graph, names, f"{base}_zero_point", np.zeros(scale.shape, target.weight_dtype.numpy())
            )
            attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
            dq = make_node(
                pass_name,
                names,
                "DequantizeLinear",
                [q_init, s_init, zp_init],
                base=f"{base}_dequantized",
                output_dtype=ir.DataType.FLOAT,
                shape=ir.Shape(w.shape),
                attributes=attrs,
            )
            graph.insert_before(node, dq)
            cache[key] = dq.outputs[0]
            stats["weights_quantized"] += 1
        replaced.append(weight)
        node.replace_input_with(slot, cache[key])

        if bias is not None and bias_slot is not None and bias_value is not None:
            per = (np.float64(x_scale) * scale.astype(np.float64)).astype(np.float32)
            qb = np.clip(
                np.rint(bias.astype(np.float64) / per.astype(np.float64)), -INT32_LIMIT, INT32_LIMIT
            ).astype(np.int32)
            bbase = bias_value.name or f"{node.name}_bias"
            qb_init = make_initializer(graph, names, f"{bbase}_quantized", qb)
            bs_init = make_initializer(graph, names, f"{bbase}_scale", per)
            bzp_init = make_initializer(graph, names, f"{bbase}_zero_point", np.zeros(per.shape, np.int32))
            attrs = [ir.AttrInt64("axis", 0)] if per.ndim == 1 else []
            bdq = make_node(
                pass_name,
                names,
                "DequantizeLinear",
                [qb_init, bs_init, bzp_init],
                base=f"{bbase}_dequantized",
                output_dtype=ir.DataType.FLOAT,
                shape=ir.Shape(bias.shape),
                attributes=attrs,
            )
            graph.insert_before(node, bdq)
            replaced.append(bias_value)
            node.replace_input_with(bias_slot, bdq.outputs[0])
            stats["biases_quantized"] += 1

    # Float weights nothing reads any more would double the model size: drop them now (chains
    # behind Identity/Reshape are left to eliminate-dead-code).
    for value in replaced:
        if (
            value.name in graph.initializers
            and graph.initializers[value.name] is value
            and not value.uses()
            and not value.is_graph_output()
            and not value.is_graph_input()
        ):
            del graph.initializers[value.name]
    modified = stats["weights_quantized"] > 0 or stats["biases_quantized"] > 0
    return PassResult(modified, {k: v for k, v in stats.items() if v} if modified else {}, tuple(diagnostics))


#: A channel whose largest weight is below this share of the layer's largest is dead.
DEAD_SHARE = 1e-6


def _dead(w: np.ndarray, axis: int, channels: np.ndarray) -> bool:
    """Whether every one of ``channels`` (a mask over ``axis``) has weights ~0 against the layer's."""
    per_channel = np.abs(np.moveaxis(np.asarray(w, np.float64), axis, 0)).reshape(w.shape[axis], -1).max(axis=1)
    layer = float(per_channel.max(initial=0.0))
    return bool(layer > 0 and np.all(per_channel[channels] <= DEAD_SHARE * layer))
