"""smooth-quant: move activation outliers into the next layer's weights, per input channel.

Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models" (ICML 2023), as NNCF's ``SmoothQuant`` and onnxruntime's ``smooth_quant`` apply it: for an
activation ``X`` read only by MatMul / Gemm layers (input channels on its last axis), with
``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)``, ``X`` is divided by ``s`` and every consumer's
weight row ``k`` multiplied by it. The division is folded into what produces ``X`` (a linear
layer's output channels and bias, through a Relu / LeakyRelu; a LayerNormalization's scale and
bias; the constant bias of an Add after a MatMul), so no op is added and the float function is
unchanged. One per-tensor activation scale then no longer spends its levels on one huge channel.

``alpha`` is searched per tensor (NNCF and onnxruntime fix one): each candidate, and no smoothing
at all, is scored by the error of the consumers' outputs with fake-quantized activations (uint8,
the range follows from per-channel min/max) and weights (as ``quantize-weights`` will round them),
on rows of the calibration samples; the best wins. Needs the ``Target`` and ``CalibrationData``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.calibration.data import CalibrationData
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.recovery._layers import (
    Linear,
    fake_quantize_weight,
    linear,
    read_activations,
    scale_along,
    set_initializer,
)
from onnxq.targets.base import Target

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Node metadata that records a smoothed input (the pass is idempotent).
MARK = "onnxq.smoothed"
#: Rows of each activation kept for the alpha search.
ROWS = 1024


@dataclasses.dataclass
class _Site:
    """An activation, its consumers, and the initializers that absorb ``1 / s``."""

    value: ir.Value
    consumers: list[Linear]
    #: (initializer, axis) pairs divided by ``s`` along ``axis``.
    divide: list[tuple[ir.Value, int]]


def _consumer_rows(layer: Linear) -> np.ndarray:
    """``max|W_k|`` per input channel ``k``."""
    w = np.abs(layer.w)
    return w.max(axis=1) if layer.in_axis == 0 else w.max(axis=0)


def _producer_fold(value: ir.Value) -> list[tuple[ir.Value, int]] | None:
    """Initializers (and axes) that divide ``value`` by ``s`` per last-axis channel, or None."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type in ("Relu", "LeakyRelu") and len(node.inputs[0].uses()) == 1 and not node.inputs[0].is_graph_output():
        node = node.inputs[0].producer()
        if node is None:
            return None
    if node.op_type == "LayerNormalization" and node.attributes.get_int("axis", -1) == -1:
        parts = [v for v in node.inputs[1:3] if v is not None]
        if all(v.is_initializer() and v.const_value is not None and len(v.uses()) == 1 for v in parts):
            return [(v, 0) for v in parts]
        return None
    if node.op_type == "Add":
        inner = next((v for v in node.inputs if v is not None and not v.is_initializer()), None)
        const = next((v for v in node.inputs if v is not None and v.is_initializer()), None)
        if inner is None or const is None or const.const_value is None or len(const.uses()) != 1 or \
                len(const.const_value.shape) != 1 or len(inner.uses()) != 1:
            return None
        producer = inner.producer()
        layer = linear(producer) if producer is not None else None
        if layer is None or layer.node.op_type != "MatMul" or len(layer.weight.uses()) != 1:
            return None
        return [(layer.weight, layer.out_axis), (const, 0)]
    layer = linear(node)
    if layer is None or layer.node.op_type == "Conv" or len(layer.weight.uses()) != 1:
        return None
    out = [(layer.weight, layer.out_axis)]
    if layer.bias is not None:
        if len(layer.bias.uses()) != 1:
            return None
        out.append((layer.bias, 0))
    return out


def _sites(model: ir.Model) -> list[_Site]:
    sites = []
    seen: set[int] = set()
    for node in model.graph:
        first = linear(node)
        if first is None or first.node.op_type == "Conv" or node.inputs[0] is None:
            continue
        value = node.inputs[0]
        if id(value) in seen or value.is_graph_input() or value.is_initializer() or value.is_graph_output():
            continue
        seen.add(id(value))
        consumers = []
        for use in value.uses():
            layer = linear(use.node)
            if layer is None or layer.node.op_type == "Conv" or use.idx != 0 or len(layer.weight.uses()) != 1:
                consumers = []
                break
            consumers.append(layer)
        if not consumers:
            continue
        divide = _producer_fold(value)
        if divide is None:
            continue
        sites.append(_Site(value, consumers, divide))
    return sites


def _collect(model: ir.Model, names: Sequence[str], data: CalibrationData,
             max_samples: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel min/max of each activation (last axis) and its first ``ROWS`` rows."""
    out: dict[str, dict[str, np.ndarray]] = {}

    def visit(name: str, array: np.ndarray) -> None:
        flat = array.reshape(-1, array.shape[-1])
        entry = out.setdefault(name, {"min": flat.min(0), "max": flat.max(0), "rows": flat[:0]})
        entry["min"] = np.minimum(entry["min"], flat.min(0))
        entry["max"] = np.maximum(entry["max"], flat.max(0))
        if len(entry["rows"]) < ROWS:
            entry["rows"] = np.concatenate([entry["rows"], flat[: ROWS - len(entry["rows"])]])

    read_activations(model, names, (f for _, f in data.feeds(model)), visit, max_samples=max_samples)
    return out


def _fake_quantize_activation(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    return ((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def smoothing_scales(xmax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)``, 1 where either is zero, kept in [1e-5, 1e5]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(xmax, alpha) / np.power(wmax, 1.0 - alpha)
    s = np.where(np.isfinite(s) & (xmax > 0) & (wmax > 0), s, 1.0)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


class SmoothQuant(Pass):
    name: ClassVar[str] = "smooth-quant"
    summary: ClassVar[str] = "Migrate activation outlier channels into the next MatMul/Gemm weights (SmoothQuant)"
    needs: ClassVar[tuple[type, ...]] = (Target, CalibrationData)

    @dataclasses.dataclass(frozen=True)
    class Options:
        alpha: float = dataclasses.field(default=-1.0, metadata={"help": "migration strength; < 0: searched"})
        per_channel: bool = dataclasses.field(default=True, metadata={"help": "weights will be per-channel"})
        max_samples: int = dataclasses.field(default=32, metadata={"help": "calibration samples read"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        data = ctx.resource(CalibrationData)
        sites = _sites(model)
        if not sites:
            return PassResult(False, {})
        stats = _collect(model, [str(s.value.name) for s in sites], data, self.options.max_samples)
        qmin, qmax = target.weight_qrange()
        qlim = int(min(-qmin, qmax))
        opset = model.opset_imports.get("", 0)
        per_channel = self.options.per_channel and target.per_channel and opset >= target.min_per_channel_opset
        alphas = (self.options.alpha,) if self.options.alpha >= 0 else ALPHAS
        smoothed = 0
        chosen: list[float] = []
        for site in sites:
            entry = stats.get(str(site.value.name))
            if entry is None or any(c.node.metadata_props.get(MARK) == "1" for c in site.consumers):
                continue
            xmax = np.maximum(np.abs(entry["min"]), np.abs(entry["max"]))
            wmax = np.max([_consumer_rows(c) for c in site.consumers], axis=0)
            if xmax.shape != wmax.shape:
                continue
            best_alpha, best_s = None, None
            best_err = self._error(site, entry, np.ones_like(xmax), target, per_channel, qlim) \
                if self.options.alpha < 0 else np.inf
            for alpha in alphas:
                s = smoothing_scales(xmax, wmax, alpha)
                err = self._error(site, entry, s, target, per_channel, qlim)
                if err < best_err:
                    best_alpha, best_s, best_err = alpha, s, err
            if best_s is None:
                continue
            for value, axis in site.divide:
                array = np.asarray(value.const_value.numpy(), np.float32)  # type: ignore[union-attr]
                set_initializer(value, scale_along(array, 1.0 / best_s, axis))
            for layer in site.consumers:
                set_initializer(layer.weight, scale_along(layer.w, best_s, layer.in_axis))
                layer.node.metadata_props[MARK] = "1"  # NOTE: a second run must not smooth twice
            smoothed += 1
            chosen.append(float(best_alpha))  # type: ignore[arg-type]
        if not smoothed:
            return PassResult(False, {})
        return PassResult(True, {"activations_smoothed": smoothed,
                                 "mean_alpha_x100": int(round(100 * float(np.mean(chosen))))})

    @staticmethod
    def _error(site: _Site, entry: dict[str, np.ndarray], s: np.ndarray, target: Target, per_channel: bool,
               qlim: int) -> float:
        """Relative output error of the consumers with activations divided by ``s``, both fake-quantized."""
        rows = entry["rows"].astype(np.float32)
        lo = float(np.min(entry["min"] / s))
        hi = float(np.max(entry["max"] / s))
        xq = _fake_quantize_activation(rows / s, lo, hi)
        total = signal = 0.0
        for layer in site.consumers:
            w = layer.w
            ws = scale_along(w, s, layer.in_axis)
            axis = target.weight_axis(layer.node, w.ndim) if per_channel else None
            wq = fake_quantize_weight(ws, axis, qlim)
            ref = rows @ (w if layer.in_axis == 0 else w.T)
            got = xq @ (wq if layer.in_axis == 0 else wq.T)
            total += float(np.sum((ref.astype(np.float64) - got) ** 2))
            signal += float(np.sum(ref.astype(np.float64) ** 2))
        return total / max(signal, 1e-30)
