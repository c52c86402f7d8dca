"""polyphase-conv: narrow convolutions with long kernels, rewritten on phases of their long axis."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.framework.context import PassContext
from onnxq.passes.fusion.polyphase_conv import Plan, PolyphaseConv, phase_weight, plan
from tests.conftest import parse
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def _weights(name: str, shape: tuple[int, ...], seed: int) -> str:
    values = np.random.default_rng(seed).normal(0, 0.2, shape).round(3).ravel()
    return f"float[{', '.join(map(str, shape))}] {name} = {{{', '.join(map(str, values))}}}"


def _model(x: str, w: tuple[int, ...], body: str, out: str, *, bias: bool = True) -> str:
    inits = [_weights("w", w, 0)] + ([_weights("b", (w[0],), 1)] if bias else [])
    return HEADER + f"\ng ({x}) => ({out}) <{', '.join(inits)}> {{\n{body}\n}}\n"


def test_fires_on_a_2d_conv_with_relu() -> None:
    # NOTE: basic-pitch's shape of convolution: 8 -> 8 channels, 3 x 39 taps, same padding
    text = _model("float[1, 8, 5, 64] x", (8, 8, 3, 39),
                  "  c = Conv<pads = [1, 19, 1, 19]>(x, w, b)\n  y = Relu(c)", "float[1, 8, 5, 64] y")
    model = assert_fires(PolyphaseConv(), text, {"convs_split": 1}, rtol=1e-4, atol=1e-4)
    assert ops(model) == ["Reshape", "Transpose", "Reshape", "Conv", "Relu", "Reshape", "Transpose", "Reshape"]
    conv = next(n for n in model.graph if n.op_type == "Conv")
    # P = 4: 32 -> 32 channels, the 39 taps become 11
    assert conv.inputs[1].const_value.shape == (32, 32, 3, 11)
    assert list(conv.attributes.get_ints("pads")) == [1, 5, 1, 5]


def test_fires_on_a_1d_conv_with_asymmetric_pads_and_no_bias() -> None:
    text = _model("float[2, 4, 64] x", (6, 4, 25), "  y = Conv<pads = [3, 21]>(x, w)", "float[2, 6, 64] y",
                  bias=False)
    model = assert_fires(PolyphaseConv(), text, {"convs_split": 1}, rtol=1e-4, atol=1e-4)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert len(conv.inputs) == 2
    assert conv.inputs[1].const_value.shape == (24, 16, 8)  # P = 4: taps -1..6 of the phases (P = 8: 1.6x the work)


def test_phase_weight_matches_the_definition() -> None:
    w = np.random.default_rng(2).normal(size=(3, 2, 9)).astype(np.float32)
    split = Plan(phases=4, j_min=-1, j_max=2, length=16, out_length=16)
    wp = phase_weight(w, split, begin=4).reshape(3, 4, 2, 4, 4)
    for q in range(4):
        for p in range(4):
            for j in range(-1, 3):
                k = 4 * j + p - q + 4
                want = w[:, :, k] if 0 <= k < 9 else 0.0
                np.testing.assert_array_equal(wp[:, q, :, p, j + 1], want)


@pytest.mark.parametrize(("x", "attrs", "reason"), [
    ("float[1, 8, 5, 64] x", "strides = [1, 2], pads = [1, 19, 1, 19]", "strided or dilated"),
    ("float[1, 8, 5, 64] x", "dilations = [1, 2], pads = [1, 38, 1, 38]", "strided or dilated"),
    ("float[1, 8, 5, F] x", "pads = [1, 19, 1, 19]", "no static length"),
    ("float[1, 8, 5, 65] x", "pads = [1, 19, 1, 19]", "no phase count fits"),
])
def test_declines(x: str, attrs: str, reason: str) -> None:
    text = _model(x, (8, 8, 3, 39), f"  y = Conv<{attrs}>(x, w, b)", "float[1, 8, 5, ?] y")
    assert_declines(PolyphaseConv(), text, reason)


def test_declines_wide_channels_and_short_kernels() -> None:
    wide = _model("float[1, 16, 5, 64] x", (4, 16, 3, 39), "  y = Conv<pads = [1, 19, 1, 19]>(x, w, b)",
                  "float[1, 4, 5, 64] y")
    model = parse(wide)
    assert str(plan(next(iter(model.graph)))) == "input channels 16 already fill the vector lanes"
    assert PolyphaseConv().explain(model) == []  # NOTE: a wide Conv is no near miss
    assert not PolyphaseConv().run(model, PassContext()).modified
    short = _model("float[1, 8, 5, 64] x", (8, 8, 3, 3), "  y = Conv<pads = [1, 1, 1, 1]>(x, w, b)",
                   "float[1, 8, 5, 64] y")
    assert_declines(PolyphaseConv(), short, "no phase count fits")


def test_plan_reads_a_grouped_conv_as_declined() -> None:
    text = _model("float[1, 8, 5, 64] x", (8, 1, 3, 39), "  y = Conv<group = 8, pads = [1, 19, 1, 19]>(x, w, b)",
                  "float[1, 8, 5, 64] y")
    model = parse(text)
    assert plan(next(iter(model.graph))) == "grouped"


def test_optimize_explain_names_the_reason() -> None:
    from onnxq.cli.optimize import explain, select_rules

    text = _model("float[1, 8, 5, 64] x", (8, 8, 3, 39), "  y = Conv<strides = [1, 2], pads = [1, 19, 1, 19]>(x, w, b)",
                  "float[1, 8, 5, 32] y")
    misses = explain(parse(text), select_rules(["polyphase-conv"]))
    assert [m.reason for m in misses] == ["strided or dilated along the last axis"]


def test_fires_on_a_single_output_channel_with_a_short_kernel() -> None:
    # NOTE: basic-pitch's contour head: 8 -> 1, 5 x 5 (2.4x the work on 4 phases, still faster)
    text = _model("float[1, 8, 6, 64] x", (1, 8, 5, 5),
                  "  c = Conv<pads = [2, 2, 2, 2]>(x, w, b)\n  y = Sigmoid(c)", "float[1, 1, 6, 64] y")
    model = assert_fires(PolyphaseConv(), text, {"convs_split": 1}, rtol=1e-4, atol=1e-4)
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.inputs[1].const_value.shape == (4, 32, 5, 3)
    # NOTE: more output channels at such a cost lose in float (3 -> 16, 3 x 3: 0.34 -> 0.99 ms): left alone
    more = _model("float[1, 8, 6, 64] x", (16, 8, 3, 3), "  y = Conv<pads = [1, 1, 1, 1]>(x, w, b)",
                  "float[1, 16, 6, 64] y")
    assert_declines(PolyphaseConv(), more, "no phase count fits")


def test_an_activation_inside_a_branch_stays_there() -> None:
    import onnx
    from onnx import helper, numpy_helper

    from onnxq import runtime
    from onnxq.passes.cleanup.infer_shapes import InferShapes

    rng = np.random.default_rng(0)
    relu = helper.make_graph([helper.make_node("Relu", ["c"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1, 8, 64])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["r2"])], "else", [],
                              [helper.make_tensor_value_info("r2", onnx.TensorProto.FLOAT, [1, 8, 64])])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[19, 19]),
         helper.make_node("If", ["cond"], ["y"], then_branch=relu, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 64]),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 64])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 39)).astype(np.float32), "w")])
    import onnx_ir as ir

    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    InferShapes().run(model, PassContext())
    feeds = {"x": rng.normal(size=(1, 8, 64)).astype(np.float32), "cond": np.array(True)}
    expected = runtime.run(model, feeds)
    assert PolyphaseConv().run(model, PassContext()).stats == {"convs_split": 1}
    assert not runtime.compare(expected, runtime.run(model, feeds), rtol=1e-4, atol=1e-4)
    assert "w" not in model.graph.initializers  # NOTE: the replaced weight is gone, not left behind


def test_depthwise_convs_are_no_near_miss() -> None:
    text = _model("float[1, 8, 5, 64] x", (8, 1, 3, 39), "  y = Conv<group = 8, pads = [1, 19, 1, 19]>(x, w, b)",
                  "float[1, 8, 5, 64] y")
    assert PolyphaseConv().explain(parse(text)) == []
