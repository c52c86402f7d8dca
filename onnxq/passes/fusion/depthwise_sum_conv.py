"""depthwise-sum-conv: a convolution to one output channel as a depthwise convolution and a channel sum.

``y = b + sum_c conv(x_c, W[0, c])``: a Conv with a single output channel over many input
channels (a score or mask head) is a depthwise Conv (the same filters, one per input channel,
the same strides / pads / dilations) followed by a 1 x 1 Conv whose weights are all one (the sum,
with the bias). onnxruntime runs a single output channel badly: its NCHWc kernels fill one of
16 lanes, and its INT8 kernel multiplies an im2col matrix by a single column. The depthwise
form fills them. Measured on basic-pitch's 32 -> 1, 7 x 3 convolution over [172, 88]
(1 thread, AVX-512 VNNI): float 2.75 -> 0.47 ms, INT8 1.79 -> 0.85 ms; exact to float rounding
(the sum runs in another order).

A Conv with fewer than 16 input channels is ``polyphase-conv``'s instead (a depthwise form of
8 channels leaves the lanes half empty; basic-pitch's 8 -> 1, 5 x 5 head ran 2.69 ms in INT8
this way against 0.91 ms on phases).

Hand-written on onnx_ir: onnxruntime has no such rewrite and onnxscript no rule for it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.passes.fusion._conv_split import ConvSplit, constant_weights
from onnxq.passes.fusion._rewrite import add_initializer

#: Input channels from which the depthwise form fills onnxruntime's vector lanes.
MIN_CHANNELS = 16
#: Reasons that are no near miss: every Conv with more output channels, and a 1 x 1 one (a channel
#: sum already, this pass's own among them).
NOT_SINGLE = "more than one output channel"
ONE_BY_ONE = "a 1 x 1 kernel: already a weighted channel sum"


def check(node: ir.Node) -> str | None:
    """Why ``node`` cannot be split, or None when it can."""
    if (why := constant_weights(node)) is not None:
        return why
    w = node.inputs[1]
    assert w is not None and w.const_value is not None
    if w.const_value.shape[0] != 1:
        return NOT_SINGLE
    if node.attributes.get_int("group", 1) != 1:
        return "grouped"
    if all(k == 1 for k in w.const_value.shape[2:]):
        return ONE_BY_ONE
    if w.const_value.shape[1] < MIN_CHANNELS:
        return f"{w.const_value.shape[1]} input channels (polyphase-conv's, below {MIN_CHANNELS})"
    return None


class DepthwiseSumConv(ConvSplit):
    name: ClassVar[str] = "depthwise-sum-conv"
    summary: ClassVar[str] = ("Split a Conv to one output channel into a depthwise Conv and a channel sum "
                              "(fills the CPU's vector lanes)")

    def plan(self, node: ir.Node) -> str | None:
        return check(node)

    def near_miss(self, reason: str) -> bool:
        return reason not in (NOT_SINGLE, ONE_BY_ONE)

    def rewrite(self, graph: ir.Graph, conv: ir.Node, plan: None) -> None:
        x, w_value = conv.inputs[0], conv.inputs[1]
        assert x is not None and w_value is not None and w_value.const_value is not None
        bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        w = np.asarray(w_value.const_value.numpy(), np.float32)
        channels = w.shape[1]
        base = conv.name or str(conv.outputs[0].name)

        def constant(array: np.ndarray, suffix: str) -> ir.Value:
            return add_initializer(graph, f"{base}_{suffix}", array)

        spatial = {name: attr for name, attr in conv.attributes.items() if name != "group"}
        depthwise = ir.node("Conv", inputs=[x, constant(w[0][:, None], "depthwise")],
                            attributes={**spatial, "group": channels}, name=f"{base}_depthwise")
        ones = constant(np.ones((1, channels, *([1] * (w.ndim - 2))), np.float32), "channel_sum")
        total = ir.node("Conv", inputs=[depthwise.outputs[0], ones, *([bias] if bias is not None else [])],
                        name=f"{base}_channel_sum")
        self.replace(graph, conv, [conv], [depthwise, total], total.outputs[0], [w_value])
