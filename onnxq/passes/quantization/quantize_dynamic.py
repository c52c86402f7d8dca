"""quantize-dynamic: int8 weights, activations quantized at run time (no calibration).

Rewrites, for constant float32 weights (initializers or Constant nodes), in the main graph and
in If/Loop/Scan bodies (weights of an outer scope included):

- ``MatMul(x, W)`` / ``Gemm(x, W, C)`` -> ``DynamicQuantizeLinear(x)`` + ``MatMulInteger`` +
  ``Cast`` + ``Mul(x_scale * w_scale)`` (+ ``Add(C)``). ONNX Runtime fuses this, with a
  following bias Add, into ``com.microsoft.DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``.
  Measured (ORT 1.32, 1 thread, [1,128,384] x [384,1536], AVX-512 VNNI): fp32 2.05 ms, this form
  0.58-0.59 ms, emitting ``DynamicQuantizeMatMul`` directly 0.60 ms, weight-only
  ``DequantizeLinear -> MatMul`` (ORT turns it into 8-bit ``MatMulNBits``) 1.64 ms. The
  standard-op form is as fast and passes the full onnx checker, so it is what we emit. One
  ``DynamicQuantizeLinear`` per activation is shared by its consumers (Q/K/V projections).
- ``LSTM`` -> ``com.microsoft.DynamicQuantizeLSTM`` (weights transposed to ``[D, in, 4H]``):
  8.1 -> 6.7 ms on a bidirectional LSTM (T 28, batch 64, hidden 64).
- ``GRU``: weights become int8 + ``DequantizeLinear`` (ORT has no integer GRU; 4x smaller
  weights, speed unchanged: 7.65 vs 7.81 ms).
- ``Gather(table, ids)`` on a float table of rank >= 2 (embeddings) -> ``Gather`` on the int8
  table, then ``DequantizeLinear`` of the rows read (per-column scales with per-channel).
- ``Conv`` only with ``conv=true``, with a warning: ``ConvInteger`` is slower than float Conv on
  x86 (measured 32->32 ch 3x3 28x28: fp32 0.23 ms, uint8 weights 0.35 ms, int8 weights 1.11 ms,
  so Conv weights are uint8 with zero point 128). ``ConvInteger`` takes a scalar weight zero
  point only, so per-channel scales are applied after it.

Weights are symmetric (zero point 0, or 128 for uint8), per-channel on the output-feature axis
where the kernel allows (MatMul/Gemm N, Conv 0, LSTM ``[D, 4H]``, GRU the gate axis), with 7-bit
weights when ``reduce_range`` (or the ``Target`` resource) says so. Written by hand because no
library does this on onnx_ir: onnxruntime's quantizer works on protobuf (the whole model in
memory) and emits ConvInteger by default. Large models stay lazy: a weight stored outside
memory (external data) is read once to find its scales and released; its int8 tensor is a
``LazyTensor`` that re-reads and quantizes it when the model is saved, so only one weight is in
memory at a time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.errors import OptionError
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext
from onnxq.ir.constants import read_and_release
from onnxq.passes.quantization._common import NameScope, Selection, round_to_grid, weight_scales

MS_DOMAIN = "com.microsoft"
#: Lowest default-domain opset with DynamicQuantizeLinear, MatMulInteger, ConvInteger, DQ.
MIN_OPSET = 10
#: Lowest opset whose DequantizeLinear takes ``axis`` (per-channel GRU / Gather scales).
PER_CHANNEL_OPSET = 13
#: Ops quantized by default (Conv only with ``conv=true``).
DEFAULT_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Gather")
_FLOAT = ir.DataType.FLOAT
_CONV_WARNING = (
    "ConvInteger is slow on x86 (measured 1.5x slower than float Conv with uint8 weights, 5x with "
    "int8): prefer static QDQ (onnxq quantize --mode static) for convolutions"
)


class QuantizeDynamic(Pass):
    name: ClassVar[str] = "quantize-dynamic"
    summary: ClassVar[str] = (
        "Dynamic int8: int8 weights, activations quantized at run time (MatMul, Gemm, LSTM, GRU, "
        "Gather; Conv on request)"
    )

    @dataclasses.dataclass(frozen=True)
    class Options:
        per_channel: bool = dataclasses.field(
            default=True, metadata={"help": "per-channel weight scales where the op allows"}
        )
        conv: bool = dataclasses.field(
            default=False, metadata={"help": "also quantize Conv (ConvInteger: slow on x86)"}
        )
        reduce_range: bool | None = dataclasses.field(
            default=None,
            metadata={"help": "7-bit weights (AVX2 without VNNI); default: the Target's choice, else this CPU's"},
        )
        ops: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "op types to consider (a:b; default MatMul, Gemm, LSTM, GRU, Gather, "
                                          "and Conv with conv=true); others are not looked at"}
        )
        include: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "quantize only nodes matching a name, op type or regex (a:b)"}
        )
        exclude: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "leave nodes matching a name, op type or regex in float (a:b)"}
        )
        min_elements: int = dataclasses.field(
            default=0, metadata={"help": "leave weights with fewer elements in float"}
        )
        small_tables: bool = dataclasses.field(
            default=True, metadata={"help": "also a Gather table smaller than what one run gathers from it "
                                             "(its DequantizeLinear then costs more per run than it saves)"}
        )

        def __post_init__(self) -> None:
            # NOTE: the driver joins patterns with ','; pipeline text separates tuple items by ':'.
            for field in ("ops", "include", "exclude"):
                items = tuple(p for item in getattr(self, field) for p in str(item).split(",") if p)
                object.__setattr__(self, field, items)
            for field in ("include", "exclude"):
                for pattern in getattr(self, field):
                    try:
                        re.compile(pattern)
                    except re.error as e:
                        raise OptionError(
                            f"pass 'quantize-dynamic' option '{field}': '{pattern}' is not a valid regex ({e})"
                        ) from None
            unknown = [op for op in self.ops if op not in (*DEFAULT_OPS, "Conv")]
            if unknown:
                raise OptionError(
                    f"pass 'quantize-dynamic' option 'ops': {', '.join(unknown)} not handled "
                    f"(use some of: {', '.join((*DEFAULT_OPS, 'Conv'))})"
                )
            if self.min_elements < 0:
                raise OptionError("pass 'quantize-dynamic' option 'min_elements' must be >= 0")

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            return PassResult(False, {}, (Diagnostic(
                f"opset {opset} has no DynamicQuantizeLinear/MatMulInteger (needs >= {MIN_OPSET}); "
                "model left in float; convert it first (convert-opset{opset=13})", Severity.WARNING),))
        rewriter = _Rewriter(model, self.options, opset, _reduce_range(self.options, ctx))
        ops = self.options.ops or ((*DEFAULT_OPS, "Conv") if self.options.conv else DEFAULT_OPS)
        # NOTE: model.graphs() walks subgraphs too; local functions are left in float (their
        # weights would be Constant nodes shared by every call site).
        for graph in list(model.graphs()):
            for node in list(graph):
                if node.domain not in ("", "ai.onnx") or node.op_type not in ops:
                    continue
                if not rewriter.selected(node):
                    rewriter.left_float(node, "excluded by include/exclude options")
                    continue
                reason = _HANDLERS[node.op_type](rewriter, graph, node)
                if reason is None:
                    rewriter.stats[f"quantized_{node.op_type.lower()}"] += 1
                else:
                    rewriter.left_float(node, reason)
        removed = rewriter.drop_unused_float_weights()
        stats = {k: v for k, v in sorted(rewriter.stats.items()) if v}
        if removed:
            stats["float_weights_removed"] = removed
        if rewriter.stats["quantized_conv"]:
            rewriter.diagnostics.insert(0, Diagnostic(_CONV_WARNING, Severity.WARNING))
        # NOTE: a node whose second weight failed (NaN) may leave its first int8 copy unused.
        rewriter.drop_orphans()
        modified = removed > 0 or any(v for k, v in rewriter.stats.items() if k.startswith("quantized_"))
        return PassResult(modified, stats if modified else {k: v for k, v in stats.items()
                                                              if k == "left_float"},
                          tuple(rewriter.diagnostics))


#: Targets whose runtime has no DynamicQuantizeLinear / MatMulInteger / DynamicQuantizeLSTM.
STATIC_ONLY_TARGETS = frozenset({"tensorrt"})


def _reduce_range(options: QuantizeDynamic.Options, ctx: PassContext) -> bool:
    from onnxq.targets.base import Target

    target = next((r for kind, r in ctx.resources.items() if issubclass(kind, Target)), None)
    if isinstance(target, Target) and target.name in STATIC_ONLY_TARGETS:
        raise OptionError(
            f"dynamic quantization emits DynamicQuantizeLinear/MatMulInteger, which target '{target.name}' "
            "does not run; use static quantization (--mode static) for it"
        )
    if options.reduce_range is not None:
        return options.reduce_range
    if isinstance(target, Target):
        return bool(target.reduce_range)
    # NOTE: no target given: the output runs on onnxruntime CPU, most likely on this machine, so its
    # CPU kind decides (full 8-bit weights saturate u8s8 products on AVX2 without VNNI).
    from onnxq.targets import get_target

    return bool(get_target("ort-cpu").reduce_range)


# --- weight quantization --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _QWeight:
    """An int8/uint8 initializer with its scale and zero point values."""

    data: ir.Value
    scale: ir.Value
    zero_point: ir.Value


def quantize_symmetric(
    w: np.ndarray, scale: np.ndarray, channel_axes: tuple[int, ...], qmax: int, *, unsigned: bool = False
) -> np.ndarray:
    """``clip(round(w / scale), -qmax, qmax)`` as int8, or shifted by 128 as uint8."""
    shape = [w.shape[a] if a in channel_axes else 1 for a in range(w.ndim)]
    if unsigned:
        return round_to_grid(w, scale.reshape(shape), 128, (128 - qmax, 128 + qmax), np.uint8)
    return round_to_grid(w, scale.reshape(shape), 0, (-qmax, qmax), np.int8)


class _Rewriter:
    """State of one run: names in use, shared quantized weights and activations, statistics."""

    def __init__(self, model: ir.Model, options: QuantizeDynamic.Options, opset: int, reduce_range: bool):
        self.model = model
        self.options = options
        self.opset = opset
        self.qmax = 64 if reduce_range else 127
        self.stats: dict[str, int] = dict.fromkeys(
            [f"quantized_{op.lower()}" for op in (*DEFAULT_OPS, "Conv")] + ["left_float"], 0)
        self.diagnostics: list[Diagnostic] = []
        self._created: list[ir.Value] = []
        self._names = NameScope(model)
        self._weights: dict[tuple[int, str], _QWeight] = {}
        self._activations: dict[tuple[int, int], tuple[ir.Value, ir.Value, ir.Value]] = {}
        self._replaced: dict[int, ir.Value] = {}
        self._selection = Selection(tuple(options.include), tuple(options.exclude))

    # --- selection and reporting ---------------------------------------------------------
    def selected(self, node: ir.Node) -> bool:
        return self._selection.selects(node)

    def left_float(self, node: ir.Node, reason: str) -> None:
        self.stats["left_float"] += 1
        self.diagnostics.append(Diagnostic(f"{node.op_type} left in float: {reason}", Severity.INFO,
                                           node=node.name or None))

    def fresh(self, base: str) -> str:
        return self._names.fresh(base)

    # --- weights ----------------------------------------------------------------------------
    def constant(self, value: ir.Value | None) -> tuple[ir.TensorProtocol | None, str]:
        """The float32 constant behind ``value``, or None and why not."""
        if value is None:
            return None, "missing weight input"
        if value.is_graph_input():
            return None, f"weight '{value.name}' is a graph input (may be overridden at run time)"
        tensor = value.const_value if value.is_initializer() else ir.convenience.get_const_tensor(value)
        if tensor is None:
            tensor = _reshaped_constant(value)
        if tensor is None:
            return None, f"weight '{value.name}' is computed at run time (not a constant)"
        if tensor.dtype != _FLOAT:
            return None, f"weight '{value.name}' is {tensor.dtype.name.lower()}; only float32 weights are quantized"
        if tensor.size < self.options.min_elements:
            return None, f"weight '{value.name}' has {tensor.size} elements < min_elements={self.options.min_elements}"
        return tensor, ""

    def weight(
        self,
        value: ir.Value,
        tensor: ir.TensorProtocol,
        *,
        layout: str,
        channel_axes: tuple[int, ...],
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
        finish: Callable[[np.ndarray], np.ndarray] | None = None,
        unsigned: bool = False,
        scale_shape: tuple[int, ...] | None = None,
    ) -> _QWeight | str:
        """Quantizes one weight (shared between consumers asking for the same layout).

        Args:
            layout: Key of the (prepare, channel_axes, finish, unsigned) combination, for sharing.
            channel_axes: Axes (after ``prepare``) with their own scale; () is per-tensor.
            prepare: Float transform before quantizing (Gemm transB: transpose).
            finish: Integer transform after (LSTM: transpose to ORT's layout).
            scale_shape: Shape of the scale/zero-point initializers (default: the channel dims).

        Returns:
            The quantized weight, or why it cannot be quantized (NaN/Inf weights).
        """
        key = (id(value), layout)
        if key in self._weights:
            return self._weights[key]
        qmax = self.qmax
        array = read_and_release(tensor)
        if prepare is not None:
            array = prepare(array)
        if not np.isfinite(array).all():
            return f"weight '{value.name}' holds NaN or Inf"
        scale = weight_scales(array, channel_axes, qmax)
        shape = list(array.shape)
        # NOTE: a zero-stride view gives the finished shape without allocating the weight.
        out_shape = shape if finish is None else list(finish(np.broadcast_to(np.int8(0), shape)).shape)
        dtype = ir.DataType.UINT8 if unsigned else ir.DataType.INT8
        base = value.name or "weight"
        qname = self.fresh(f"{base}_quantized")

        def build(w: np.ndarray) -> ir.Tensor:
            q = quantize_symmetric(w, scale, channel_axes, qmax, unsigned=unsigned)
            if finish is not None:
                q = np.ascontiguousarray(finish(q))
            return ir.tensor(q, name=qname)

        if isinstance(tensor, (ir.ExternalTensor, ir.LazyTensor)):
            del array

            def load() -> ir.TensorProtocol:
                source = read_and_release(tensor)
                return build(prepare(source) if prepare is not None else source)

            qtensor: ir.TensorProtocol = ir.LazyTensor(load, dtype=dtype, shape=ir.Shape(out_shape), name=qname)
        else:
            qtensor = build(array)
        owner = _owner(value, self.model)
        data = self._initializer(owner, qname, qtensor)
        if scale_shape is not None:
            scale = scale.reshape(scale_shape)
        zero = np.full(scale.shape, 128 if unsigned else 0, np.uint8 if unsigned else np.int8)
        s = self._initializer(owner, self.fresh(f"{base}_scale"), ir.tensor(scale))
        z = self._initializer(owner, self.fresh(f"{base}_zero_point"), ir.tensor(zero))
        result = _QWeight(data, s, z)
        self._weights[key] = result
        self._replaced[id(value)] = value
        return result

    def small_constant(self, graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
        return self._initializer(graph, self.fresh(base), ir.tensor(array))

    def _initializer(self, graph: ir.Graph, name: str, tensor: ir.TensorProtocol) -> ir.Value:
        tensor.name = name
        value = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape),
                         const_value=tensor)
        graph.register_initializer(value)
        self._created.append(value)
        return value

    # --- activations -------------------------------------------------------------------------
    def dynamic_quantize(self, graph: ir.Graph, before: ir.Node, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """One DynamicQuantizeLinear of ``x`` per graph, shared by its quantized consumers."""
        key = (id(graph), id(x))
        if key not in self._activations:
            base = x.name or "x"
            node = ir.node("DynamicQuantizeLinear", [x], name=self.fresh(f"{base}_DynamicQuantizeLinear"),
                           num_outputs=3)
            for out, suffix in zip(node.outputs, ("quantized", "scale", "zero_point"), strict=True):
                out.name = self.fresh(f"{base}_{suffix}")
            node.outputs[0].type = ir.TensorType(ir.DataType.UINT8)
            node.outputs[0].shape = x.shape
            node.outputs[1].type = ir.TensorType(_FLOAT)
            node.outputs[1].shape = ir.Shape([])
            node.outputs[2].type = ir.TensorType(ir.DataType.UINT8)
            node.outputs[2].shape = ir.Shape([])
            # NOTE: x is defined before `before` (its first quantized consumer), and every later
            # consumer comes after it in graph order, so inserting here keeps the order valid.
            graph.insert_before(before, node)
            self._activations[key] = (node.outputs[0], node.outputs[1], node.outputs[2])
        return self._activations[key]

    def node(self, graph: ir.Graph, before: ir.Node, op: str, inputs: Iterable[ir.Value | None], base: str,
             attributes: dict[str, object] | None = None, domain: str = "", num_outputs: int = 1) -> ir.Node:
        new = ir.node(op, list(inputs), attributes, domain=domain, name=self.fresh(base), num_outputs=num_outputs)
        for i, out in enumerate(new.outputs):
            out.name = self.fresh(f"{base}_out{i}" if num_outputs > 1 else f"{base}_out")
        graph.insert_before(before, new)
        return new

    def replace(self, graph: ir.Graph, old: ir.Node, new_output: ir.Value) -> None:
        """Routes every use of ``old``'s output (graph outputs included) to ``new_output``."""
        out = old.outputs[0]
        new_output.type = out.type
        new_output.shape = out.shape
        if out.is_graph_output():
            # NOTE: a graph output keeps its name; the new value takes it.
            name = out.name
            out.name = self.fresh(f"{name}_float")
            new_output.name = name
        ir.convenience.replace_all_uses_with(out, new_output, replace_graph_outputs=True)
        graph.remove(old, safe=True)

    def drop_orphans(self) -> None:
        """Removes initializers this run created that nothing uses."""
        for value in self._created:
            graph = value.graph
            if not value.uses() and isinstance(graph, ir.Graph) and graph.initializers.get(value.name) is value:
                graph.initializers.pop(value.name)

    def drop_unused_float_weights(self) -> int:
        """Removes float initializers whose every use was replaced; returns how many."""
        removed = 0
        for value in self._replaced.values():
            if value.uses() or value.is_graph_output() or not value.is_initializer():
                continue
            graph = value.graph
            if graph is None or value.name not in graph.initializers:
                continue
            graph.initializers.pop(value.name)
            _release(value.const_value)
            removed += 1
        return removed


def _owner(value: ir.Value, model: ir.Model) -> ir.Graph:
    """The graph a quantized weight goes in: the float weight's graph (outer scopes stay outer)."""
    graph = value.graph
    if isinstance(graph, ir.Graph):
        return graph
    return model.graph


#: Ops that only change the shape of their data input: a constant behind them is still a weight
#: (exporters emit e.g. ``Unsqueeze(W)`` for RNN weights, which folding skips above its size limit).
_RESHAPES = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"})


def _reshaped_constant(value: ir.Value) -> ir.TensorProtocol | None:
    """The constant behind a chain of shape-only ops, reshaped to ``value``'s static shape."""
    producer = value.producer()
    if producer is None or producer.op_type not in _RESHAPES or producer.domain not in ("", "ai.onnx"):
        return None
    shape = value.shape
    if shape is None or not shape.is_static() or not producer.inputs or producer.inputs[0] is None:
        return None
    source = producer.inputs[0]
    if source.is_graph_input():
        return None
    inner = source.const_value if source.is_initializer() else ir.convenience.get_const_tensor(source)
    if inner is None:
        inner = _reshaped_constant(source)
    dims = tuple(int(d) for d in shape)
    if inner is None or inner.size != int(np.prod(dims, dtype=np.int64)):
        return None
    if isinstance(inner, (ir.ExternalTensor, ir.LazyTensor)):
        src = inner
        return ir.LazyTensor(lambda: ir.tensor(read_and_release(src).reshape(dims)), dtype=inner.dtype,
                             shape=ir.Shape(dims), name=value.name)
    return ir.tensor(np.asarray(inner.numpy()).reshape(dims), name=value.name)


def _release(tensor: ir.TensorProtocol | None) -> None:
    if isinstance(tensor, ir.ExternalTensor):
        tensor.release()


def _is_constant(value: ir.Value | None) -> bool:
    if value is None or value.is_graph_input():
        return False
    return value.const_value is not None or ir.convenience.get_const_tensor(value) is not None


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


# --- rewrites (each returns None when done, or why the node stays float) ---------------------
def _integer_matmul(rw: _Rewriter, graph: ir.Graph, node: ir.Node, x: ir.Value, qw: _QWeight,
                    w_scale: ir.Value) -> ir.Value:
    xq, xs, xz = rw.dynamic_quantize(graph, node, x)
    base = node.name or node.outputs[0].name or node.op_type
    mm = rw.node(graph, node, "MatMulInteger", [xq, qw.data, xz, qw.zero_point], f"{base}_MatMulInteger")
    cast = rw.node(graph, node, "Cast", mm.outputs, f"{base}_Cast", {"to": _FLOAT})
    scale = rw.node(graph, node, "Mul", [xs, w_scale], f"{base}_scale")
    return rw.node(graph, node, "Mul", [cast.outputs[0], scale.outputs[0]], f"{base}_Mul").outputs[0]


def _matmul(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    if len(node.inputs) != 2 or node.inputs[0] is None:
        return "malformed MatMul"
    if _is_constant(node.inputs[0]):
        return "activation input is constant (fold-constants evaluates the node)"
    tensor, why = rw.constant(node.inputs[1])
    if tensor is None:
        return why
    if len(tensor.shape) != 2:
        return f"weight is {len(tensor.shape)}-D; MatMulInteger weights are quantized when 2-D"
    axes = (1,) if rw.options.per_channel else ()
    qw = rw.weight(node.inputs[1], tensor, layout="kn" + str(axes), channel_axes=axes)
    if isinstance(qw, str):
        return qw
    y = _integer_matmul(rw, graph, node, node.inputs[0], qw, qw.scale)
    rw.replace(graph, node, y)
    return None


def _gemm(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    if _attr_int(node, "transA", 0):
        return "transA=1 (the activation would need a Transpose)"
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return "malformed Gemm"
    if _is_constant(node.inputs[0]):
        return "activation input is constant (fold-constants evaluates the node)"
    tensor, why = rw.constant(node.inputs[1])
    if tensor is None:
        return why
    if len(tensor.shape) != 2:
        return "weight is not 2-D"
    trans_b = _attr_int(node, "transB", 0)
    alpha, beta = _attr_float(node, "alpha", 1.0), _attr_float(node, "beta", 1.0)
    axes = (1,) if rw.options.per_channel else ()
    qw = rw.weight(node.inputs[1], tensor, layout=f"kn{axes}{trans_b}", channel_axes=axes,
                   prepare=(lambda w: w.T) if trans_b else None)
    if isinstance(qw, str):
        return qw
    w_scale = qw.scale
    base = node.name or node.outputs[0].name or "Gemm"
    if alpha != 1.0:
        scale_array = np.asarray(qw.scale.const_value.numpy() * np.float32(alpha), np.float32)  # type: ignore[union-attr]
        w_scale = rw.small_constant(_owner(qw.scale, rw.model), f"{base}_alpha_scale", scale_array)
    y = _integer_matmul(rw, graph, node, node.inputs[0], qw, w_scale)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and beta != 0.0:
        if beta != 1.0:
            b = rw.small_constant(graph, f"{base}_beta", np.array(beta, np.float32))
            bias = rw.node(graph, node, "Mul", [bias, b], f"{base}_beta_Mul").outputs[0]
        y = rw.node(graph, node, "Add", [y, bias], f"{base}_bias").outputs[0]
    rw.replace(graph, node, y)
    return None


def _conv(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    if len(node.inputs) < 2 or node.inputs[0] is None:
        return "malformed Conv"
    if _is_constant(node.inputs[0]):
        return "activation input is constant (fold-constants evaluates the node)"
    tensor, why = rw.constant(node.inputs[1])
    if tensor is None:
        return why
    rank = len(tensor.shape)
    if rank < 3:
        return "weight rank < 3"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bias_tensor = None
    if bias is not None:
        bias_tensor, why = rw.constant(bias)
        if bias_tensor is None:
            return f"bias: {why}"
    per_channel = rw.options.per_channel
    axes = (0,) if per_channel else ()
    channels = tensor.shape[0]
    bshape = (1, channels, *([1] * (rank - 2)))
    qw = rw.weight(node.inputs[1], tensor, layout=f"conv{axes}", channel_axes=axes, unsigned=True,
                   scale_shape=bshape if per_channel else None)
    if isinstance(qw, str):
        return qw
    xq, xs, xz = rw.dynamic_quantize(graph, node, node.inputs[0])
    base = node.name or node.outputs[0].name or "Conv"
    attrs = {k: v for k, v in node.attributes.items()
             if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
    # NOTE: ConvInteger takes a scalar weight zero point only (ORT: "Non per-tensor quantization
    # is not supported"); symmetric weights share zero point 128, scales are applied after.
    zp = rw.small_constant(graph, f"{base}_weight_zero_point", np.array(128, np.uint8))
    conv = ir.node("ConvInteger", [xq, qw.data, xz, zp], name=rw.fresh(f"{base}_ConvInteger"))
    for attr in attrs.values():
        conv.attributes[attr.name] = attr
    conv.outputs[0].name = rw.fresh(f"{base}_ConvInteger_out")
    graph.insert_before(node, conv)
    cast = rw.node(graph, node, "Cast", conv.outputs, f"{base}_Cast", {"to": _FLOAT})
    scale = rw.node(graph, node, "Mul", [xs, qw.scale], f"{base}_scale")
    y = rw.node(graph, node, "Mul", [cast.outputs[0], scale.outputs[0]], f"{base}_Mul").outputs[0]
    if bias is not None and bias_tensor is not None:
        b = rw.small_constant(graph, f"{base}_bias_reshaped",
                              np.asarray(bias_tensor.numpy(), np.float32).reshape(bshape))
        y = rw.node(graph, node, "Add", [y, b], f"{base}_bias").outputs[0]
    rw.replace(graph, node, y)
    return None


def _recurrent_weights(rw: _Rewriter, node: ir.Node) -> list[ir.TensorProtocol] | str:
    """The constant 3-D W and R of an LSTM/GRU, or why they cannot be quantized."""
    if len(node.inputs) < 3:
        return f"malformed {node.op_type}"
    weights = []
    for slot in (1, 2):
        tensor, why = rw.constant(node.inputs[slot])
        if tensor is None:
            return why
        if len(tensor.shape) != 3:
            return f"input {slot} is not 3-D"
        weights.append(tensor)
    return weights


def _lstm(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    if _attr_int(node, "layout", 0) != 0:
        return "layout=1 (DynamicQuantizeLSTM takes sequence-first inputs only)"
    weights = _recurrent_weights(rw, node)
    if isinstance(weights, str):
        return weights
    axes = (0, 1) if rw.options.per_channel else ()
    quantized = []
    for slot, tensor in zip((1, 2), weights, strict=True):
        # NOTE: ORT wants per-tensor LSTM scales as shape [1], not scalars.
        qw = rw.weight(node.inputs[slot], tensor, layout=f"lstm{axes}", channel_axes=axes,
                       finish=lambda q: q.transpose(0, 2, 1), scale_shape=None if axes else (1,))
        if isinstance(qw, str):
            return qw
        quantized.append(qw)
    (w, r) = quantized
    inputs = list(node.inputs[:8]) + [None] * (8 - len(node.inputs[:8]))
    inputs[1], inputs[2] = w.data, r.data
    inputs += [w.scale, w.zero_point, r.scale, r.zero_point]
    attrs = [a for name, a in node.attributes.items() if name != "layout"]
    base = node.name or node.outputs[0].name or "LSTM"
    new = ir.node("DynamicQuantizeLSTM", inputs, domain=MS_DOMAIN, name=rw.fresh(f"{base}_quant"),
                  num_outputs=len(node.outputs))
    for attr in attrs:
        new.attributes[attr.name] = attr
    graph.insert_before(node, new)
    _ensure_ms_opset(rw.model)
    for old, out in zip(node.outputs, new.outputs, strict=True):
        out.type, out.shape = old.type, old.shape
        if old.is_graph_output():
            name = old.name
            old.name = rw.fresh(f"{name}_float")
            out.name = name
        else:
            out.name = rw.fresh(f"{old.name or base}_q")
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    return None


def _gru(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    found = _recurrent_weights(rw, node)
    if isinstance(found, str):
        return found
    # NOTE: DequantizeLinear has one axis: the gate axis 1 (scales shared by both directions).
    per_channel = rw.options.per_channel and rw.opset >= PER_CHANNEL_OPSET
    axes = (1,) if per_channel else ()
    base = node.name or node.outputs[0].name or "GRU"
    quantized = []
    for slot, tensor in zip((1, 2), found, strict=True):
        qw = rw.weight(node.inputs[slot], tensor, layout=f"gru{axes}", channel_axes=axes)
        if isinstance(qw, str):
            return qw
        quantized.append(qw)
    for slot, qw in zip((1, 2), quantized, strict=True):
        dq = rw.node(graph, node, "DequantizeLinear", [qw.data, qw.scale, qw.zero_point],
                     f"{base}_{'W' if slot == 1 else 'R'}_DequantizeLinear", {"axis": 1} if per_channel else None)
        dq.outputs[0].type = ir.TensorType(_FLOAT)
        dq.outputs[0].shape = ir.Shape(qw.data.shape)  # type: ignore[arg-type]
        node.replace_input_with(slot, dq.outputs[0])
    return None


def _gather(rw: _Rewriter, graph: ir.Graph, node: ir.Node) -> str | None:
    if len(node.inputs) != 2 or node.inputs[1] is None:
        return "malformed Gather"
    value = node.inputs[0]
    tensor, why = rw.constant(value)
    if tensor is None:
        return why
    rank = len(tensor.shape)
    if rank < 2:
        return "table is 1-D (not an embedding)"
    axis = _attr_int(node, "axis", 0)
    if axis not in (0, -rank):
        return f"axis={axis}; embeddings are gathered on axis 0"
    index = node.inputs[1]
    if not rw.options.small_tables and index.shape is not None:
        # NOTE: an INT8 table saves its size once and costs a DequantizeLinear of every gathered row
        # on every run: worth it for a vocabulary (30 000 rows, a sequence of 128 read), not for
        # Magika's 258 x 64 table read 2048 times per file (0.25 of 3.3 ms per run, 50 KB saved).
        # Unknown dims count as 1.
        gathered = int(np.prod([d if isinstance(d, int) else 1 for d in index.shape], dtype=np.int64))
        if tensor.size <= gathered * int(np.prod(tensor.shape[1:], dtype=np.int64)):
            return "the table holds fewer values than one run gathers from it"
    per_channel = rw.options.per_channel and rw.opset >= PER_CHANNEL_OPSET
    # NOTE: per-column scales survive the Gather unchanged (the last axis is not gathered).
    axes = (rank - 1,) if per_channel else ()
    qw = rw.weight(value, tensor, layout=f"gather{axes}", channel_axes=axes)
    if isinstance(qw, str):
        return qw
    base = node.name or node.outputs[0].name or "Gather"
    gathered = rw.node(graph, node, "Gather", [qw.data, node.inputs[1]], f"{base}_int8", {"axis": 0})
    dq = rw.node(graph, node, "DequantizeLinear", [gathered.outputs[0], qw.scale, qw.zero_point],
                 f"{base}_DequantizeLinear", {"axis": -1} if per_channel else None)
    rw.replace(graph, node, dq.outputs[0])
    return None


def _ensure_ms_opset(model: ir.Model) -> None:
    if MS_DOMAIN not in model.opset_imports:
        model.opset_imports[MS_DOMAIN] = 1


_HANDLERS: dict[str, Callable[[_Rewriter, ir.Graph, ir.Node], str | None]] = {
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "LSTM": _lstm,
    "GRU": _gru,
    "Gather": _gather,
}
