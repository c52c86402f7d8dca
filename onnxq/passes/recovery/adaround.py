"""adaround: round each weight up or down so that the layer's output error is smallest (AdaRound).

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020), as
AIMET's ``Adaround`` applies it: per layer, a continuous variable ``V`` per weight chooses between
``floor(W / s)`` and ``floor(W / s) + 1`` through the rectified sigmoid
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (``zeta = 1.1``, ``gamma = -0.1``);
Adam minimises the layer's output error ``sum_c mean_x ((W_soft - W)_c . x)^2`` plus
``lambda * sum(1 - |2 h(V) - 1| ** beta)``, with ``beta`` annealed from 20 to 2 after a warm start
of 20 % of the iterations without the regulariser (AIMET's defaults: ``lambda = 0.01``,
``beta`` 20 -> 2, warm start 0.2). ``V`` starts where ``h(V)`` equals the fractional part of
``W / s``, so the first soft weights are the float weights.

Where this differs from AIMET, and why:

- The output error is a quadratic form of the weight change, so the layer's input enters only
  through its Gram matrix ``G = mean(x x^T)`` (per channel for a depthwise convolution). ``G`` is
  accumulated while the calibration samples stream through onnxruntime (convolution patches taken
  on an evenly spaced grid of output positions), never storing the activations, and each Adam step
  is exact over all of them (full batch) instead of a mini-batch: a few hundred steps instead of
  AIMET's 10 000.
- The inputs are the float model's (AIMET's default too); layers are independent.
- The scale ``s`` is the one ``quantize-weights`` will compute (symmetric, per channel on the
  target's axis, 7-bit on AVX2), and each channel's largest weight keeps its nearest rounding, so
  the written weights lie on that grid and ``quantize-weights`` reproduces them exactly.
- A layer keeps nearest rounding when the learnt rounding is not better on ``G``.
- Layers whose reduction dimension exceeds ``max_inputs`` are skipped (``G`` would be too large),
  and the pass stops at ``time_limit_s`` (the layers left keep nearest rounding: only then do two
  runs differ).

Needs the ``Target`` and the ``CalibrationData``; runs on the float model before ``insert-qdq``.
Written here with numpy: onnxruntime has no AdaRound, AIMET's runs on torch with its own sessions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnxq.calibration.data import CalibrationData
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.quantization._common import Selection, weight_scales
from onnxq.passes.recovery._layers import Linear, quantized_layers, read_activations, set_initializer
from onnxq.targets.base import Target

ZETA, GAMMA = 1.1, -0.1
#: Node metadata that records rounded weights (the pass is idempotent).
MARK = "onnxq.adarounded"
#: Layers whose inputs are read per onnxruntime session (their Gram matrices are held together).
LAYERS_PER_READ = 8
#: Output error of nearest rounding per weight, after scaling (AdaRound's regulariser weight
#: ``reg`` is relative to it).
ERROR_PER_WEIGHT = 1e-3


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(rest: np.ndarray) -> np.ndarray:
    """``V`` with ``h(V) = rest`` (AIMET's initialisation)."""
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def _output_error(delta: np.ndarray, gram: np.ndarray) -> float:
    """``sum_c delta_c^T G delta_c``: ``gram`` is ``[K, K]`` (shared) or ``[C, K, K]`` (per channel)."""
    if gram.ndim == 2:
        return float(np.einsum("ck,ck->", delta @ gram, delta))
    return float(np.einsum("ck,ckl,cl->", delta, gram, delta))


def adaround_rows(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, qlim: int, *, iterations: int = 500,
                  reg: float = 0.01, beta: tuple[float, float] = (20.0, 2.0), warm_start: float = 0.2,
                  lr: float = 0.05, deadline: float | None = None) -> tuple[np.ndarray, float, float]:
    """Integer weights ``[C, K]`` for ``w`` (rows are output channels) on the grid ``scale`` (``[C]``
    or a scalar), chosen by AdaRound against the Gram matrix of the inputs.

    Returns the integers and the output error of nearest and of the returned rounding; past
    ``deadline`` (``time.perf_counter()``), nearest rounding.
    """
    w = np.asarray(w, np.float64)
    s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1, 1) if np.ndim(scale) else scale, w.shape)
    x = w / s
    nearest = np.clip(np.rint(x), -qlim, qlim)
    base = np.floor(x)
    # NOTE: each channel's largest weight keeps its rounding: the scale follows from it.
    fixed = (np.abs(nearest) >= qlim) | (base >= qlim) | (base + 1 <= -qlim)
    before = _output_error((nearest - x) * s, gram)
    # NOTE: the output error is scaled so that nearest rounding costs ERROR_PER_WEIGHT per weight:
    # the regulariser then weighs the same against it whatever the activations' magnitude.
    g32 = (gram * (ERROR_PER_WEIGHT * w.size / before if before > 0 else 1.0)).astype(np.float32)
    w32, s32, base32 = w.astype(np.float32), s.astype(np.float32), base.astype(np.float32)
    v = _initial_v(x - base).astype(np.float32)
    m = np.zeros_like(v)
    m2 = np.zeros_like(v)
    warm = int(warm_start * iterations)
    for step in range(iterations):
        if deadline is not None and step % 16 == 0 and time.perf_counter() > deadline:
            return nearest, before, before
        h = rectified_sigmoid(v)
        delta = (base32 + h) * s32 - w32
        grad = 2.0 * (delta @ g32 if g32.ndim == 2 else np.einsum("ckl,cl->ck", g32, delta)) * s32
        if step >= warm:
            b = beta[1] + 0.5 * (beta[0] - beta[1]) * (1.0 + math.cos(math.pi * (step - warm) / max(iterations - warm, 1)))
            t = 2.0 * h - 1.0
            grad += reg * (-b * np.abs(t) ** (b - 1.0) * np.sign(t) * 2.0)
        sig = 1.0 / (1.0 + np.exp(-v))
        grad *= sig * (1.0 - sig) * (ZETA - GAMMA) * ((h > 0.0) & (h < 1.0))
        grad[fixed] = 0.0
        m = 0.9 * m + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad * grad
        v -= lr * (m / (1.0 - 0.9 ** (step + 1))) / (np.sqrt(m2 / (1.0 - 0.999 ** (step + 1))) + 1e-8)
    rounded = np.clip(base + (v >= 0.0), -qlim, qlim)
    rounded[fixed] = nearest[fixed]
    after = _output_error((rounded - x) * s, gram)
    if after >= before:
        return nearest, before, before
    return rounded, before, after


@dataclasses.dataclass
class _Layer:
    layer: Linear
    rows: np.ndarray  # weight as [C, K]
    depthwise: bool
    gram: np.ndarray | None = None
    count: int = 0


def _rows(layer: Linear) -> np.ndarray:
    """The weight as ``[output channels, reduction]`` (a convolution's patch order: C, k...)."""
    w = layer.w
    if layer.node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if layer.out_axis == 0 else w.T


def _grid(size: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, size - 1, num=min(size, count)).round().astype(np.int64))


def conv_patches(x: np.ndarray, node: ir.Node, kernel: Sequence[int], max_rows: int) -> np.ndarray | None:
    """Input patches ``[rows, C, prod(kernel)]`` of a convolution at evenly spaced output positions."""
    spatial = x.ndim - 2
    if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    pads = list(node.attributes.get_ints("pads", [0] * 2 * spatial))
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial))
    x = np.pad(x, [(0, 0), (0, 0), *[(pads[i], pads[i + spatial]) for i in range(spatial)]])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if any(x.shape[2 + i] < span[i] for i in range(spatial)):
        return None
    win = sliding_window_view(x, span, axis=tuple(range(2, x.ndim)))  # [N, C, O..., span...]
    per_dim = max(1, int(round(max_rows ** (1.0 / spatial))))
    for i in range(spatial):
        out = (x.shape[2 + i] - span[i]) // strides[i] + 1
        index = _grid(out, per_dim) * strides[i]
        win = np.take(win, index, axis=2 + i)
    win = win[(Ellipsis, *[slice(None, None, d) for d in dilations])]
    n, c = win.shape[:2]
    win = np.moveaxis(win, 1, 1 + spatial)  # [N, O..., C, k...]
    return np.ascontiguousarray(win).reshape(-1, c, int(np.prod(kernel)))


class AdaRound(Pass):
    name: ClassVar[str] = "adaround"
    summary: ClassVar[str] = "Round each weight up or down to minimise the layer's output error (AdaRound)"
    needs: ClassVar[tuple[type, ...]] = (Target, CalibrationData)

    @dataclasses.dataclass(frozen=True)
    class Options:
        per_channel: bool = dataclasses.field(default=True, metadata={"help": "weights will be per-channel"})
        iterations: int = dataclasses.field(default=500, metadata={"help": "Adam steps per layer"})
        reg: float = dataclasses.field(default=0.01, metadata={"help": "weight of the rounding regulariser"})
        max_samples: int = dataclasses.field(default=16, metadata={"help": "calibration samples for the Gram matrices"})
        max_rows: int = dataclasses.field(default=1024, metadata={"help": "input rows (positions) per sample and layer"})
        max_inputs: int = dataclasses.field(default=2304, metadata={"help": "skip layers with a longer reduction"})
        time_limit_s: float = dataclasses.field(default=180.0, metadata={"help": "stop after this; the rest keep nearest"})
        include: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "only these nodes"})
        exclude: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "leave these nodes alone"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        data = ctx.resource(CalibrationData)
        selection = Selection(self.options.include, self.options.exclude)
        opset = model.opset_imports.get("", 0)
        per_channel = self.options.per_channel and target.per_channel and opset >= target.min_per_channel_opset
        qmin, qmax = target.weight_qrange()
        qlim = int(min(-qmin, qmax))
        layers: list[_Layer] = []
        too_wide = 0
        for layer in quantized_layers(model, target, selection):
            node = layer.node
            if node.metadata_props.get(MARK) == "1":
                continue
            if node.op_type == "Gemm" and node.attributes.get_float("alpha", 1.0) != 1.0:
                continue
            rows = _rows(layer)
            depthwise = layer.depthwise
            if (rows.shape[1] if not depthwise else 0) > self.options.max_inputs:
                too_wide += 1
                continue
            layers.append(_Layer(layer, rows, depthwise))
        if not layers:
            return PassResult(False, {"layers_too_wide": too_wide} if too_wide else {})
        began = time.perf_counter()
        rounded = kept = out_of_time = 0
        ratios: list[float] = []
        for start in range(0, len(layers), LAYERS_PER_READ):
            if time.perf_counter() - began > self.options.time_limit_s:
                out_of_time += len(layers) - start
                break
            group = layers[start:start + LAYERS_PER_READ]
            self._grams(model, group, data)
            for entry in group:
                if time.perf_counter() - began > self.options.time_limit_s:
                    out_of_time += 1
                    continue
                if entry.gram is None or entry.count == 0:
                    continue
                layer = entry.layer
                axis = target.weight_axis(layer.node, layer.w.ndim) if per_channel else None
                scale = weight_scales(layer.w, (axis,) if axis is not None else (), qlim)
                gram = entry.gram / entry.count
                ints, before, after = adaround_rows(entry.rows, scale, gram, qlim,
                                                    iterations=self.options.iterations, reg=self.options.reg,
                                                    deadline=began + self.options.time_limit_s)
                entry.gram = None
                if after >= before:
                    if time.perf_counter() - began > self.options.time_limit_s:
                        out_of_time += 1
                    else:
                        kept += 1
                    continue
                s = np.asarray(scale, np.float64).reshape(-1, 1) if np.ndim(scale) else float(scale)
                new_rows = (ints * s).astype(np.float32)
                w = layer.w
                if layer.node.op_type == "Conv":
                    new = new_rows.reshape(w.shape)
                else:
                    new = new_rows if layer.out_axis == 0 else np.ascontiguousarray(new_rows.T)
                if not np.allclose(weight_scales(new, (axis,) if axis is not None else (), qlim), scale, rtol=1e-5):
                    kept += 1  # NOTE: quantize-weights would compute another grid from these weights
                    continue
                set_initializer(layer.weight, new)
                layer.node.metadata_props[MARK] = "1"
                rounded += 1
                ratios.append(after / before if before > 0 else 1.0)
        stats = {"layers_rounded": rounded}
        if kept:
            stats["layers_kept_nearest"] = kept
        if too_wide:
            stats["layers_too_wide"] = too_wide
        if out_of_time:
            stats["layers_out_of_time"] = out_of_time
        if ratios:
            stats["mean_error_vs_nearest_pct"] = int(round(100 * float(np.mean(ratios))))
        return PassResult(rounded > 0, stats)

    def _grams(self, model: ir.Model, group: list[_Layer], data: CalibrationData) -> None:
        """Accumulates each layer's input Gram matrix over the calibration samples (streamed)."""
        by_input: dict[str, list[_Layer]] = {}
        for entry in group:
            by_input.setdefault(str(entry.layer.node.inputs[0].name), []).append(entry)  # type: ignore[union-attr]
        max_rows = self.options.max_rows

        def visit(name: str, x: np.ndarray) -> None:
            for entry in by_input[name]:
                node = entry.layer.node
                if node.op_type == "Conv":
                    kernel = entry.layer.weight.const_value.shape[2:]  # type: ignore[union-attr]
                    patches = conv_patches(x, node, list(kernel), max_rows)
                    if patches is None:
                        continue
                    p = patches.astype(np.float64)
                    if entry.depthwise:
                        g = np.einsum("rck,rcl->ckl", p, p)
                    else:
                        flat = p.reshape(p.shape[0], -1)
                        g = flat.T @ flat
                    rows = p.shape[0]
                else:
                    flat = x.reshape(-1, x.shape[-1])
                    flat = flat[_grid(flat.shape[0], max_rows)].astype(np.float64)
                    g = flat.T @ flat
                    rows = flat.shape[0]
                if entry.gram is None:
                    entry.gram = g
                else:
                    entry.gram += g
                entry.count += rows

        read_activations(model, sorted(by_input), (f for _, f in data.feeds(model)), visit,
                         max_samples=self.options.max_samples)
