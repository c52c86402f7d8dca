"""depthwise-sum-conv: a Conv to one output channel as a depthwise Conv and a channel sum."""

from __future__ import annotations

import numpy as np

from onnxq.framework.context import PassContext
from onnxq.passes.fusion.depthwise_sum_conv import DepthwiseSumConv
from tests.conftest import parse
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def _model(x: str, w: tuple[int, ...], body: str, out: str) -> str:
    values = np.random.default_rng(0).normal(0, 0.2, w).round(3).ravel()
    inits = f"float[{', '.join(map(str, w))}] w = {{{', '.join(map(str, values))}}}, float[1] b = {{0.25}}"
    return HEADER + f"\ng ({x}) => ({out}) <{inits}> {{\n{body}\n}}\n"


def test_fires_with_strides_pads_and_a_bias() -> None:
    # NOTE: basic-pitch's note head: 32 -> 1, 7 x 3 (here strided and padded unevenly too)
    text = _model("float[2, 32, 9, 12] x", (1, 32, 7, 3),
                  "  c = Conv<strides = [2, 1], pads = [3, 1, 2, 0]>(x, w, b)\n  y = Sigmoid(c)", "float[2, 1, 4, 10] y")
    model = assert_fires(DepthwiseSumConv(), text, {"convs_split": 1}, rtol=1e-4, atol=1e-5)
    assert ops(model) == ["Conv", "Conv", "Sigmoid"]
    depthwise, total, _ = model.graph
    assert depthwise.attributes.get_int("group") == 32
    assert list(depthwise.attributes.get_ints("strides")) == [2, 1]
    assert depthwise.inputs[1].const_value.shape == (32, 1, 7, 3)
    assert total.inputs[1].const_value.shape == (1, 32, 1, 1)
    assert total.inputs[2].name == "b"
    assert "w" not in model.graph.initializers


def test_fires_on_a_1d_conv_without_bias() -> None:
    text = _model("float[1, 16, 20] x", (1, 16, 5), "  y = Conv<pads = [2, 2]>(x, w)", "float[1, 1, 20] y")
    model = assert_fires(DepthwiseSumConv(), text, {"convs_split": 1}, rtol=1e-4, atol=1e-5)
    assert len(list(model.graph)[1].inputs) == 2


def test_declines_with_reasons() -> None:
    assert_declines(DepthwiseSumConv(), _model("float[1, 8, 9, 12] x", (1, 8, 3, 3), "  y = Conv(x, w, b)",
                                               "float[1, 1, 7, 10] y"), "8 input channels (polyphase-conv's")
    # NOTE: a 1 x 1 Conv to one channel is already a weighted channel sum (and the sum this pass
    # writes: it must not split it again); no near miss either
    model = parse(_model("float[1, 32, 9, 12] x", (1, 32, 1, 1), "  y = Conv(x, w, b)", "float[1, 1, 9, 12] y"))
    assert not DepthwiseSumConv().run(model, PassContext()).modified
    assert DepthwiseSumConv().explain(model) == []


def test_more_output_channels_are_no_near_miss() -> None:
    model = parse(_model("float[1, 32, 9, 12] x", (2, 32, 3, 3), "  y = Conv(x, w)", "float[1, 2, 7, 10] y"))
    assert DepthwiseSumConv().explain(model) == []
    assert not DepthwiseSumConv().run(model, PassContext()).modified
