"""polyphase-conv: a convolution with few input channels, rewritten on ``P`` phases of its long axis.

A stride-1 convolution over few input channels (below 16) wastes most of the CPU's vector lanes:
onnxruntime's NCHWc kernels pad the channels to blocks of 16, and its INT8 kernels im2col a
``K = Cin x kernel`` matrix for an ``N = Cout`` of a few columns. Spotify basic-pitch's 3 x 39
convolution over 8 -> 8 channels of a [172, 264] constant-Q image took 14 of the model's 30 ms
(1 thread, AVX-512), and ran no faster in INT8 (13.7 ms); its 5 x 5 convolution 8 -> 1 took
2.6 ms in float and 2.4 ms in INT8.

The same function on ``P`` phases: the input's long axis is split into ``P`` interleaved phases
(``x_p[i] = x[P i + p]``) that become channels, and so is the output's. Output phase ``q`` at
``f'`` reads input phase ``p`` at ``f' + j`` through the tap ``k = P j + p - q + pad_begin``::

    y[P f' + q] = sum_{c, p, j} W[o, c, ..., P j + p - q + pad_begin] * x_p[c, ..., f' + j]

so the rewritten Conv has ``Cin * P`` input and ``Cout * P`` output channels, a kernel of
about ``(kernel + P - 1) / P`` taps along the axis (zero where ``k`` falls outside the
kernel), and zero padding of the phases where the original zero-padded ``x``. Reshape /
Transpose / Reshape build the phases before and interleave them after; an activation that read
the convolution (Relu, Clip...) moves before the interleave, so it still fuses into the Conv.
``P`` is the smallest of 2, 4, 8 that gives 32 input channels (else 16) within 1.3x the
multiply-adds (2.5x for a single output channel; see ``MAX_EXTRA_WORK`` for where more work
loses in float although INT8 still gains). Measured (1 thread, AVX-512 VNNI, float / INT8 ms, exact to float rounding):
the 3 x 39 one (``P = 4``: 32 -> 32 channels, 3 x 11 taps, 1.13x the work) 13.4 -> 5.0 in float;
the 5 x 5 one (``P = 4``: 32 -> 4 channels, 5 x 3 taps, 2.4x the work) 2.63 / 2.40 -> 1.68 / 0.91.
A single output channel over many inputs is ``depthwise-sum-conv``'s.

Declines (with the reason ``explain`` gives): grouped, strided or dilated along the axis,
``auto_pad``, a computed weight, a length that is not static or not divisible by ``P``, 16 input
channels or more, a kernel too short for the phases to pay.

Hand-written on onnx_ir: onnxruntime has no such rewrite and onnxscript no rule for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.passes.fusion._conv_split import ConvSplit, constant_weights
from onnxq.passes.fusion._rewrite import add_initializer

#: Channel counts from which onnxruntime's kernels already fill their vector lanes.
WIDE = 16
WIDE_REASON = "already fill the vector lanes"
#: A grouped (depthwise) Conv: no near miss either.
GROUPED = "grouped"
#: Phase counts tried, smallest first; the first that gives ``GOOD_CHANNELS`` channels wins.
PHASES = (2, 4, 8)
GOOD_CHANNELS = 32
#: Most multiply-adds (with the phase kernel's zero taps) against the original's: 1.3x, and 2.5x
#: for a single output channel, which leaves onnxruntime's kernels 1/16 busy. Measured (1 thread,
#: AVX-512 VNNI, float / INT8 ms): at 2.4x the work 8 -> 8 5 x 5 2.67 / 2.51 -> 2.82 / 0.99 and
#: 8 -> 16 5 x 5 0.65 / 0.52 -> 1.16 / 0.38, 3 -> 16 3 x 3 at 4x 0.34 / 0.79 -> 0.99 / 0.35; within
#: 1.3x 8 -> 8 5 x 5 -> 2.38 / 1.53, 8 -> 16 5 x 5 -> 0.72 / 0.32, 8 -> 8 7 x 7 1.21 / 0.88 -> 1.02 /
#: 0.45; one output channel, 8 -> 1 5 x 5 at 2.4x, 2.63 / 2.40 -> 1.68 / 0.91.
MAX_EXTRA_WORK = 1.3
MAX_EXTRA_WORK_SINGLE_OUTPUT = 2.5
#: Activations that move before the interleave (elementwise, one data input).
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
                         "Selu", "Softplus"})


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one Conv is split: ``phases`` along the last axis, the phase kernel's tap range."""

    phases: int
    j_min: int
    j_max: int
    length: int  # input length along the axis
    out_length: int

    @property
    def taps(self) -> int:
        return self.j_max - self.j_min + 1


def plan(node: ir.Node) -> Plan | str:
    """The split of ``node`` (a Conv), or why there is none."""
    if (why := constant_weights(node)) is not None:
        return why
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None and w.const_value is not None
    shape = w.const_value.shape
    rank = len(shape) - 2
    if rank not in (1, 2):
        return "not a 1-D or 2-D convolution"
    if node.attributes.get_int("group", 1) != 1:
        return GROUPED
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return "auto_pad"
    strides = list(node.attributes.get_ints("strides", [1] * rank))
    dilations = list(node.attributes.get_ints("dilations", [1] * rank))
    pads = list(node.attributes.get_ints("pads", [0] * (2 * rank)))
    if strides[-1] != 1 or dilations[-1] != 1:
        return "strided or dilated along the last axis"
    c_out, c_in, kernel = int(shape[0]), int(shape[1]), int(shape[-1])
    if c_in >= WIDE:
        return f"input channels {c_in} {WIDE_REASON}"
    if x.shape is None or len(x.shape) != rank + 2 or not isinstance(x.shape[-1], int):
        return "the input's last axis has no static length"
    length = int(x.shape[-1])
    begin, end = pads[rank - 1], pads[2 * rank - 1]
    out_length = length + begin + end - kernel + 1
    best: Plan | None = None
    for p in PHASES:
        if length % p or out_length % p or out_length <= 0:
            continue
        j_min, j_max = math.floor(-begin / p), math.floor((p - 1 + kernel - 1 - begin) / p)
        candidate = Plan(p, j_min, j_max, length, out_length)
        limit = MAX_EXTRA_WORK_SINGLE_OUTPUT if c_out == 1 else MAX_EXTRA_WORK
        if candidate.taps * p > limit * kernel or out_length // p + j_max - length // p < 0:
            continue
        if c_in * p >= WIDE:
            best = candidate
            if c_in * p >= GOOD_CHANNELS:
                break
    if best is None:
        return (f"no phase count fits (length {length}, kernel {kernel}, channels {c_in} -> {c_out}: "
                f"divisible by 2/4/8, at most {MAX_EXTRA_WORK:g}x the multiply-adds, "
                f"{MAX_EXTRA_WORK_SINGLE_OUTPUT:g}x for one output channel)")
    return best


def phase_weight(w: np.ndarray, split: Plan, begin: int) -> np.ndarray:
    """``W[o, c, ..., k]`` -> ``Wp[o * P + q, c * P + p, ..., j - j_min]`` with ``k = P j + p - q + begin``."""
    p_ = split.phases
    c_out, c_in = w.shape[:2]
    lead = w.shape[2:-1]
    out = np.zeros((c_out, p_, c_in, p_, *lead, split.taps), w.dtype)
    for q in range(p_):
        for p in range(p_):
            for j in range(split.j_min, split.j_max + 1):
                k = p_ * j + p - q + begin
                if 0 <= k < w.shape[-1]:
                    out[:, q, :, p, ..., j - split.j_min] = w[..., k]
    return out.reshape(c_out * p_, c_in * p_, *lead, split.taps)


def _activation(conv: ir.Node) -> ir.Node | None:
    """The elementwise activation that alone reads the Conv's output (its other inputs constant)."""
    out = conv.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    user = uses[0].node
    if user.graph is not conv.graph:
        return None  # NOTE: read inside an If / Loop body: it stays there, after the interleave
    if user.op_type not in ACTIVATIONS or user.domain not in ("", "ai.onnx") or uses[0].idx != 0:
        return None
    if any(v is not None and v.const_value is None for v in user.inputs[1:]):
        return None
    return user


class PolyphaseConv(ConvSplit):
    name: ClassVar[str] = "polyphase-conv"
    summary: ClassVar[str] = ("Rewrite stride-1 convolutions over few input channels on phases of their last "
                              "axis (more channels, shorter kernels: fills the CPU's vector lanes)")

    def plan(self, node: ir.Node) -> Plan | str:
        return plan(node)

    def near_miss(self, reason: str) -> bool:
        """A Conv with 16 input channels or more, or a grouped one, is no near miss."""
        return not reason.endswith(WIDE_REASON) and reason != GROUPED

    def rewrite(self, graph: ir.Graph, conv: ir.Node, split: Plan) -> None:
        x, w_value = conv.inputs[0], conv.inputs[1]
        assert x is not None and w_value is not None and w_value.const_value is not None
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        w = np.asarray(w_value.const_value.numpy(), np.float32)
        rank = w.ndim - 2
        p_ = split.phases
        c_out, c_in = w.shape[:2]
        pads = list(conv.attributes.get_ints("pads", [0] * (2 * rank)))
        begin = pads[rank - 1]
        base = conv.name or str(conv.outputs[0].name)
        created: list[ir.Node] = []

        def constant(array: np.ndarray, suffix: str) -> ir.Value:
            return add_initializer(graph, f"{base}_{suffix}", array)

        def add(op: str, inputs: list[ir.Value | None], attributes: dict[str, Any] | None = None,
                domain: str = "") -> ir.Value:
            node = ir.node(op, inputs=inputs, attributes=attributes or {}, domain=domain,
                           name=f"{base}_polyphase_{len(created)}")
            created.append(node)
            return node.outputs[0]

        lead = [0] * (rank - 1)  # NOTE: Reshape's 0 keeps the batch and the leading spatial axes
        fi, fo = split.length // p_, split.out_length // p_
        # x [N, C, (H,) F] -> [N, C, (H,) F/P, P] -> [N, C, P, (H,) F/P] -> [N, C * P, (H,) F/P]
        split_in = add("Reshape", [x, constant(np.array([0, c_in, *lead, fi, p_], np.int64), "phases_in")])
        perm_in = [0, 1, rank + 2, *range(2, rank + 2)]
        moved = add("Transpose", [split_in], {"perm": perm_in})
        merged_shape = [0, c_in * p_, *([-1] if rank == 2 else []), fi]
        phases = add("Reshape", [moved, constant(np.array(merged_shape, np.int64), "phase_channels_in")])
        new_pads = [*pads[: rank - 1], -split.j_min, *pads[rank: 2 * rank - 1], fo + split.j_max - fi]
        kernel = [*list(conv.attributes.get_ints("kernel_shape", list(w.shape[2:])))[:-1], split.taps]
        attributes: dict[str, Any] = {"pads": new_pads, "kernel_shape": kernel}
        for name in ("strides", "dilations"):
            if name in conv.attributes:
                attributes[name] = list(conv.attributes.get_ints(name))
        bias = None
        if b_value is not None and b_value.const_value is not None:
            bias = constant(np.repeat(np.asarray(b_value.const_value.numpy(), np.float32), p_), "phase_bias")
        conv_inputs = [phases, constant(phase_weight(w, split, begin), "phase_weight"), *([bias] if bias else [])]
        y = add("Conv", conv_inputs, attributes)
        activation = _activation(conv)
        last = activation if activation is not None else conv
        if activation is not None:
            y = add(activation.op_type, [y, *activation.inputs[1:]], dict(activation.attributes.items()),
                    activation.domain)
        # y [N, Cout * P, (H',) F/P] -> [N, Cout, P, (H',) F/P] -> [N, Cout, (H',) F/P, P] -> [N, Cout, (H',) F]
        unmerged = [0, c_out, p_, *([-1] if rank == 2 else []), fo]
        split_out = add("Reshape", [y, constant(np.array(unmerged, np.int64), "phases_out")])
        perm_out = [0, 1, *range(3, rank + 3), 2]
        moved_out = add("Transpose", [split_out], {"perm": perm_out})
        out_shape = [0, c_out, *lead, fo * p_]
        result = add("Reshape", [moved_out, constant(np.array(out_shape, np.int64), "interleaved")])
        self.replace(graph, last, [conv, *([activation] if activation is not None else [])], created, result,
                     [w_value, b_value])
