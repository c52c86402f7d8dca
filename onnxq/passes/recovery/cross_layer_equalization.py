"""cross-layer-equalization: balance the weight ranges of consecutive layers, channel by channel.

Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction" (ICCV
2019), as AIMET's ``equalize_model`` applies it: for two layers joined by a positive-homogeneous
activation (none, Relu, LeakyRelu, PRelu: ``f(x / s) = f(x) / s`` for ``s > 0``), output channel
``i`` of the first is divided by ``s_i = sqrt(r1_i / r2_i)`` (weight and bias) and input channel
``i`` of the second multiplied by it, where ``r1_i`` / ``r2_i`` are the channels' weight ranges.
The float function is unchanged; afterwards both channels have range ``sqrt(r1_i * r2_i)``, so one
per-tensor weight scale no longer rounds the small channels away (BatchNorm folding leaves channel
ranges 100x apart). Depthwise convolutions take part on either side. Chains of three are
balanced by repeating the pairs (``iterations``).

Assumes BatchNorm is already folded (the ``optimize`` preset does it). With per-channel weights
the first layer gains nothing; the pass matters for per-tensor weights (opsets below 13, targets
without per-channel kernels). Written here: onnxruntime has no equalization, and AIMET's works on
its own graph representation.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.passes.recovery._layers import Linear, linear, scale_along, set_initializer, single_user

#: Activations ``f`` with ``f(x / s) = f(x) / s`` for every ``s > 0`` (scalar slopes only).
HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu"})


def _pairs(model: ir.Model) -> list[tuple[Linear, Linear]]:
    pairs = []
    for node in model.graph:
        first = linear(node)
        if first is None:
            continue
        value = node.outputs[0]
        user = single_user(value)
        if user is not None and user.op_type in HOMOGENEOUS:
            if user.op_type == "PRelu":
                slope = user.inputs[1].const_value if len(user.inputs) > 1 and user.inputs[1] is not None else None
                if slope is None or slope.size != 1:
                    continue
            value = user.outputs[0]
            user = single_user(value)
        second = linear(user) if user is not None else None
        if second is None or second.node.inputs[0] is not value:
            continue
        if first.channels_out != second.w.shape[second.in_axis] * (second.groups if second.depthwise else 1):
            continue
        shared = [first.weight, second.weight, *([first.bias] if first.bias is not None else [])]
        if any(len({u.node for u in v.uses()}) > 1 for v in shared):
            continue  # a shared initializer would change for its other users too
        pairs.append((first, second))
    return pairs


def _ranges(layer: Linear, axis: int) -> np.ndarray:
    w = np.abs(layer.w)
    return w.max(axis=tuple(i for i in range(w.ndim) if i != axis))


def equalization_scales(first: Linear, second: Linear) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)`` (1 where a channel is all zeros)."""
    r1 = _ranges(first, first.out_axis)
    r2 = _ranges(second, second.out_axis if second.depthwise else second.in_axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)


class CrossLayerEqualization(Pass):
    name: ClassVar[str] = "cross-layer-equalization"
    summary: ClassVar[str] = "Balance per-channel weight ranges of consecutive Conv/Gemm/MatMul layers (CLE)"

    @dataclasses.dataclass(frozen=True)
    class Options:
        iterations: int = dataclasses.field(default=3, metadata={"help": "rounds over all pairs (chains of 3+)"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        pairs = _pairs(model)
        equalized: set[str] = set()
        spread_before = _spread(pairs)
        for _ in range(max(self.options.iterations, 1)):
            changed = False
            for first, second in pairs:
                s = equalization_scales(first, second)
                if np.allclose(s, 1.0, rtol=1e-3):
                    continue
                set_initializer(first.weight, scale_along(first.w, 1.0 / s, first.out_axis))
                if first.bias is not None:
                    set_initializer(first.bias, (first.b / s).astype(np.float32))  # type: ignore[operator]
                set_initializer(second.weight, scale_along(second.w, s, second.out_axis if second.depthwise
                                                           else second.in_axis))
                equalized.add(first.node.name or "")
                changed = True
            if not changed:
                break
        if not equalized:
            return PassResult(False, {})
        stats = {"pairs_equalized": len(equalized),
                 "range_spread_before_x100": int(100 * spread_before),
                 "range_spread_after_x100": int(100 * _spread(pairs))}
        return PassResult(True, stats)


def _spread(pairs: list[tuple[Linear, Linear]]) -> float:
    """The worst max/min ratio of channel ranges over the first layers (how unbalanced they are)."""
    worst = 1.0
    for first, _ in pairs:
        r = _ranges(first, first.out_axis)
        r = r[r > 0]
        if r.size:
            worst = max(worst, float(r.max() / r.min()))
    return worst
