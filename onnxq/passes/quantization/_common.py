"""Helpers shared by the quantization passes: constants, quantization parameters, names, selection.

Hand-written because onnx_ir has no notion of quantization parameters and onnxruntime's
quantizer helpers work on protobuf ``ModelProto`` (and fail on weights behind Identity/Reshape,
which :func:`resolve_constant` looks through).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.errors import OptionError
from onnxq.ir.constants import constant_array
from onnxq.ir.interop import call_onnx

#: ``metadata_props`` key on every node a quantization pass creates: the pass's name.
PASS_METADATA_KEY = "onnxq.pass"
#: Smallest scale emitted; a zero/denormal scale would make QuantizeLinear divide by zero.
MIN_SCALE = 1e-8
#: Ops a weight may reach its consumer through (looked through and folded).
_WEIGHT_CHAIN_OPS = frozenset({"Identity", "Cast", "Reshape", "Constant"})


def resolve_constant(value: ir.Value | None, *, max_depth: int = 8) -> np.ndarray | None:
    """The constant array behind ``value``, looking through Identity, Cast, Reshape, Constant.

    Returns None when the chain reaches anything else (a graph input, a computed tensor).
    """
    if value is None:
        return None
    direct = constant_array(value)
    if direct is not None or max_depth == 0:
        return direct
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in _WEIGHT_CHAIN_OPS:
        return None
    if node.op_type == "Identity":
        return resolve_constant(node.inputs[0], max_depth=max_depth - 1)
    if node.op_type == "Cast":
        source = resolve_constant(node.inputs[0], max_depth=max_depth - 1)
        to = node.attributes.get("to")
        if source is None or to is None:
            return None
        return source.astype(ir.DataType(to.as_int()).numpy())
    if node.op_type == "Reshape":
        source = resolve_constant(node.inputs[0], max_depth=max_depth - 1)
        shape = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if source is None or shape is None:
            return None
        allow_zero = node.attributes.get("allowzero")
        target = [
            source.shape[i] if (d == 0 and not (allow_zero and allow_zero.as_int())) else int(d)
            for i, d in enumerate(shape.tolist())
        ]
        try:
            return source.reshape(target)
        except ValueError:
            return None
    return None


def is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is a constant, without reading its data (weights stay lazy)."""
    if value is None or value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    node = value.producer()
    return (
        node is not None
        and node.op_type == "Constant"
        and node.domain in ("", "ai.onnx")
        and len(node.attributes) == 1
        and not next(iter(node.attributes.values())).is_ref()
    )


def constant_meta(value: ir.Value | None, *, max_depth: int = 8) -> tuple[str, tuple[int, ...]] | None:
    """(numpy dtype kind, shape) of the constant behind ``value`` (as :func:`resolve_constant`
    finds it), reading data only for small Constant nodes and Reshape chains."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        tensor = value.const_value
        return np.dtype(tensor.dtype.numpy()).kind, tuple(int(d) for d in tensor.shape)
    node = value.producer()
    if node is not None and node.op_type == "Identity" and node.domain in ("", "ai.onnx") and max_depth > 0:
        return constant_meta(node.inputs[0], max_depth=max_depth - 1)
    if node is not None and node.op_type == "Cast" and node.domain in ("", "ai.onnx") and max_depth > 0:
        source = constant_meta(node.inputs[0], max_depth=max_depth - 1)
        to = node.attributes.get("to")
        if source is None or to is None:
            return None
        return np.dtype(ir.DataType(to.as_int()).numpy()).kind, source[1]
    array = resolve_constant(value, max_depth=max_depth)
    return (array.dtype.kind, tuple(array.shape)) if array is not None else None


def is_float(value: ir.Value | None, dtypes: Mapping[str, ir.DataType] | None = None) -> bool:
    """Whether ``value`` is float32 (its own type, else the inferred one in ``dtypes``)."""
    if value is None:
        return False
    dtype = value.dtype
    if dtype is None and dtypes is not None and value.name is not None:
        dtype = dtypes.get(value.name)
    return dtype == ir.DataType.FLOAT


def inferred_dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    """Element types of the main graph's values by onnx type inference, without touching ``model``.

    Empty when every value already has a type, or when inference fails (then nothing whose type
    is unknown gets quantized).
    """
    if all(o.dtype is not None for node in model.graph for o in node.outputs if o.name):
        return {}

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=False)

    try:
        inferred = call_onnx(infer, model)
    except Exception:  # noqa: BLE001  # onnx raises InferenceError, RuntimeError...; types stay unknown
        return {}
    result: dict[str, ir.DataType] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            result[info.name] = ir.DataType(info.type.tensor_type.elem_type)
    return result


@dataclasses.dataclass(frozen=True)
class QParams:
    """Per-tensor quantization parameters of an activation."""

    scale: float
    zero_point: int
    dtype: ir.DataType

    def real_range(self, qmin: int, qmax: int) -> tuple[float, float]:
        """The float interval the integer range covers."""
        return ((qmin - self.zero_point) * self.scale, (qmax - self.zero_point) * self.scale)


def activation_qparams(
    lo: float, hi: float, *, dtype: ir.DataType, qrange: tuple[int, int], symmetric: bool
) -> QParams:
    """Scale and zero point for ``[lo, hi]``, widened to include 0; never a zero/NaN/inf scale."""
    qmin, qmax = qrange
    lo = min(float(lo), 0.0) if math.isfinite(lo) else 0.0
    hi = max(float(hi), 0.0) if math.isfinite(hi) else 0.0
    if symmetric:
        bound = max(-lo, hi)
        scale = bound / ((qmax - qmin) / 2) if bound > 0 else 1.0
        zero_point = 0 if dtype == ir.DataType.INT8 else (qmin + qmax + 1) // 2
    else:
        scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        scale = max(scale, MIN_SCALE)
        zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    scale = float(np.float32(max(scale, MIN_SCALE)))
    return QParams(scale, zero_point, dtype)


def fit_inside(params: QParams, qrange: tuple[int, int], lo: float, hi: float) -> QParams | None:
    """Shrinks the scale so the quantized domain lies inside ``[lo, hi]`` as ORT's Clip removal wants.

    onnxruntime removes Clip(lo, hi) -> Q when ``lo <= (qmin - zp + 0.5) * s`` and
    ``(qmax - zp - 0.5) * s <= hi``. Returns None when no positive scale satisfies both.
    """
    qmin, qmax = qrange
    scale = params.scale
    top = qmax - params.zero_point - 0.5
    bottom = qmin - params.zero_point + 0.5
    if math.isfinite(hi) and top > 0 and top * scale > hi:
        scale = hi / top
    if math.isfinite(lo) and bottom < 0 and bottom * scale < lo:
        scale = lo / bottom
    scale = float(np.float32(scale))
    while scale > 0 and (
        (math.isfinite(hi) and top * scale > hi) or (math.isfinite(lo) and bottom * scale < lo)
    ):
        scale = float(np.nextafter(np.float32(scale), np.float32(0)))
    if not scale >= MIN_SCALE:
        return None
    return QParams(scale, params.zero_point, params.dtype)


def round_to_grid(array: np.ndarray, scale: np.ndarray | float, zero_point: np.ndarray | float,
                  qrange: tuple[int, int], dtype: np.dtype | type) -> np.ndarray:
    """``saturate(round_half_even(array / scale) + zero_point)``, bit for bit as onnxruntime's QuantizeLinear.

    MLAS divides in float32 (``MlasQuantizeLinear``: ``_mm_div_ps``), then rounds half to even;
    dividing in float64 puts values near a .5 tie one step off (measured: 13 in a million random
    values and about half of exact ties). ``scale`` / ``zero_point`` broadcast against ``array``
    (a per-channel scale reshaped to its axis). One float32 temporary, rounded in place.
    """
    # NOTE: asarray: a 0-d input divides to a numpy scalar, which cannot be rounded in place.
    q = np.asarray(np.divide(np.asarray(array, np.float32), np.asarray(scale, np.float32), dtype=np.float32))
    np.rint(q, out=q)
    q += np.asarray(zero_point, np.float32)
    np.clip(q, qrange[0], qrange[1], out=q)
    return q.astype(dtype)


def quantize_array(array: np.ndarray, params: QParams, qrange: tuple[int, int]) -> np.ndarray:
    """Rounds ``array`` into the integer type of ``params`` exactly as QuantizeLinear does."""
    return round_to_grid(array, params.scale, params.zero_point, qrange, params.dtype.numpy())


def weight_scales(w: np.ndarray, channel_axes: tuple[int, ...], qmax: int) -> np.ndarray:
    """Symmetric float32 scales: max |w| over every axis but ``channel_axes``, divided by ``qmax``.

    Never zero or subnormal: an all-zero channel gets scale 1 (its values quantize to 0).
    ``channel_axes=()`` gives one 0-d scale (per-tensor).
    """
    reduce = tuple(a for a in range(w.ndim) if a not in channel_axes)
    # NOTE: max and -min instead of abs(): no temporary copy of a multi-GB weight.
    amax = np.maximum(np.max(w, axis=reduce), -np.min(w, axis=reduce)).astype(np.float32)
    scale = (amax / np.float32(qmax)).astype(np.float32)
    scale = np.where(amax > 0, np.maximum(scale, np.float32(np.finfo(np.float32).tiny)), np.float32(1.0))
    return np.asarray(scale, dtype=np.float32)


def along_axis(scale: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """A per-channel ``scale`` reshaped to broadcast along ``axis`` of an ``ndim`` array (as is when per-tensor)."""
    if axis is None or np.ndim(scale) == 0:
        return scale
    return scale.reshape([-1 if i == axis else 1 for i in range(ndim)])


class NameScope:
    """Hands out value/node names that do not clash with any name in the model, deterministically."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph in model.graphs():
            for value in [*graph.inputs, *graph.outputs, *graph.initializers.values()]:
                if value.name:
                    self._taken.add(value.name)
            for node in graph:
                if node.name:
                    self._taken.add(node.name)
                for out in node.outputs:
                    if out.name:
                        self._taken.add(out.name)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            name = f"{base}_{k}"
            k += 1
        self._taken.add(name)
        return name


def make_initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer named from ``base`` holding ``array``."""
    name = names.fresh(base)
    value = ir.Value(
        name=name,
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def make_node(
    pass_name: str,
    names: NameScope,
    op_type: str,
    inputs: Sequence[ir.Value],
    *,
    base: str,
    output_dtype: ir.DataType,
    shape: ir.Shape | None,
    attributes: Iterable[ir.Attr] = (),
) -> ir.Node:
    """A default-domain node with one output, named from ``base``, tagged with the pass name."""
    out = ir.Value(name=names.fresh(base), type=ir.TensorType(output_dtype), shape=shape)
    return ir.Node(
        "",
        op_type,
        inputs,
        attributes=list(attributes),
        outputs=[out],
        name=names.fresh(f"{base}_{op_type}"),
        metadata_props={PASS_METADATA_KEY: pass_name},
    )


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which nodes a pass may touch: ``include`` (empty: all) minus ``exclude``.

    A pattern matches a node when it equals the node's name or op type, or when it is a regular
    expression that matches the whole node name.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise OptionError(f"include/exclude pattern '{pattern}' is not a valid regex ({e})") from None

    @staticmethod
    def _matches(pattern: str, node: ir.Node) -> bool:
        name = node.name or ""
        if pattern in (name, node.op_type):
            return True
        try:
            return re.fullmatch(pattern, name) is not None
        except re.error:
            return False

    def selects(self, node: ir.Node) -> bool:
        if self.include and not any(self._matches(p, node) for p in self.include):
            return False
        return not any(self._matches(p, node) for p in self.exclude)
