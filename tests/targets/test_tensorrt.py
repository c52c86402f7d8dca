"""The tensorrt profile and the TensorRT rule walker: a correct TRT-style QDQ graph passes, each
broken rule is found on a small graph and names its node."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.errors import UserError
from onnxq.targets import get_target, target_names
from onnxq.targets.tensorrt import TensorRTTarget, residual_slot
from onnxq.targets.tensorrt_rules import RULES, Violation, check_tensorrt

RNG = np.random.default_rng(0)


def _lit(a: np.ndarray) -> str:
    return "{" + ",".join(str(int(v)) if a.dtype.kind in "iu" else repr(float(v)) for v in a.ravel()) + "}"


def _model(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


W1 = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
W2 = RNG.integers(-127, 128, (4, 4, 1, 1)).astype(np.int8)
WG = RNG.integers(-127, 128, (10, 4)).astype(np.int8)
S1 = (RNG.random(4) * 0.01 + 0.001).astype(np.float32)
S2 = (RNG.random(4) * 0.01 + 0.001).astype(np.float32)
SG = (RNG.random(10) * 0.01 + 0.001).astype(np.float32)
B1 = (RNG.standard_normal(4) * 0.1).astype(np.float32)

#: A ResNet-style block quantized the TensorRT way: Q/DQ on both inputs of every Conv/Gemm,
#: the residual input of the Add quantized, nothing between conv2 and the Add, no output Q/DQ,
#: int8 zero points 0, per-channel weights on axis 0 (Gemm transB=1: axis 0), float biases.
GOOD = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 10] y) <
  int8[4, 3, 3, 3] w1 = {_lit(W1)}, float[4] s1 = {_lit(S1)}, int8[4] z4 = {{0, 0, 0, 0}},
  int8[4, 4, 1, 1] w2 = {_lit(W2)}, float[4] s2 = {_lit(S2)}, float[4] b1 = {_lit(B1)},
  int8[10, 4] wg = {_lit(WG)}, float[10] sg = {_lit(SG)}, int8[10] z10 = {_lit(np.zeros(10, np.int8))},
  float sx = {{0.02}}, int8 z = {{0}}, float sa = {{0.05}}, float sp = {{0.04}}
> {{
  xq = QuantizeLinear(x, sx, z)
  xd = DequantizeLinear(xq, sx, z)
  w1d = DequantizeLinear<axis=0>(w1, s1, z4)
  c1 = Conv<pads=[1, 1, 1, 1]>(xd, w1d, b1)
  r1 = Relu(c1)
  r1q = QuantizeLinear(r1, sa, z)
  r1d = DequantizeLinear(r1q, sa, z)
  w2d = DequantizeLinear<axis=0>(w2, s2, z4)
  c2 = Conv(r1d, w2d)
  add = Add(c2, r1d)
  r2 = Relu(add)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  fq = QuantizeLinear(f, sp, z)
  fd = DequantizeLinear(fq, sp, z)
  wgd = DequantizeLinear<axis=0>(wg, sg, z10)
  y = Gemm<transB=1>(fd, wgd)
}}"""


def _names(model: ir.Model) -> ir.Model:
    """Names every node after its first output, so violations can be matched by name."""
    for graph in model.graphs():
        for node in graph:
            node.name = node.name or f"n_{node.outputs[0].name}"
    return model


def _rules(violations: list[Violation]) -> list[tuple[str, str]]:
    return sorted((v.node, v.rule) for v in violations)


def test_profile_types_and_rules() -> None:
    target = get_target("tensorrt")
    assert "tensorrt" in target_names()
    assert isinstance(target, TensorRTTarget)
    assert (target.activation_dtype, target.weight_dtype) == (ir.DataType.INT8, ir.DataType.INT8)
    assert target.activation_symmetric and target.weight_symmetric and target.per_channel
    assert not target.requires_bias_int32 and not target.absorbed_ops and not target.quantize_graph_outputs
    assert target.output_optional_ops >= {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    assert target.weight_qrange() == (-127, 127)
    with pytest.raises(UserError, match="NVIDIA GPUs"):
        get_target("tensorrt", cpu="avx2")


def test_profile_quantizes_only_the_residual_input_of_adds_after_convs() -> None:
    model = _names(_model(GOOD))
    target = get_target("tensorrt")
    nodes = {n.name: n for n in model.graph}
    add = nodes["n_add"]
    assert residual_slot(add) == 1 and target.activation_inputs(add) == (1,) and target.is_integer_op(add)
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] a, float[4] b) => (float[4] y) { y = Add(a, b) }"""
    plain = _model(text).graph.node(0)
    assert not target.is_integer_op(plain) and target.activation_inputs(plain) == ()
    for op, rank, axis in (("n_c1", 4, 0), ("n_y", 2, 0)):
        assert target.weight_axis(nodes[op], rank) == axis


def test_residual_of_an_add_between_two_convs_is_the_skip_connection() -> None:
    # MobileNetV2: the previous block's projection (a) feeds the next block and the Add.
    w = RNG.standard_normal((2, 2, 1, 1)).astype(np.float32)
    text = f"""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y, float[1, 2, 4, 4] n) <float[2, 2, 1, 1] W = {_lit(w)}> {{
      a = Conv(x, W)
      b = Conv(a, W)
      y = Add(ADD)
      n = Conv(a, W)
    }}"""
    for args, slot in (("a, b", 0), ("b, a", 1)):
        add = _model(text.replace("ADD", args)).graph.node(2)
        assert residual_slot(add) == slot


def test_a_tensorrt_style_graph_passes_and_runs() -> None:
    model = _model(GOOD)
    assert check_tensorrt(model) == []
    runtime.run(model, {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)})


# Each broken graph: (rule, node named in the violation, edit of the GOOD text).
BROKEN = [
    ("zero-point", "n_w1d", ("int8[4] z4 = {0, 0, 0, 0}", "int8[4] z4 = {0, 3, 0, 0}")),
    ("quant-type", "n_xq", ("xq = QuantizeLinear(x, sx, z)\n  xd = DequantizeLinear(xq, sx, z)",
                            "xq = QuantizeLinear(x, sx, zu)\n  xd = DequantizeLinear(xq, sx, zu)")),
    ("scale", "n_r1q", ("float sa = {0.05}", "float sa = {-0.05}")),
    ("per-tensor-activation", "n_fq", ("fq = QuantizeLinear(f, sp, z)\n  fd = DequantizeLinear(fq, sp, z)",
                                       "fq = QuantizeLinear<axis=1>(f, s1, z4)\n  fd = DequantizeLinear<axis=1>(fq, s1, z4)")),
    ("weight-axis", "n_wgd", ("y = Gemm<transB=1>(fd, wgd)", "y = Gemm<transB=0>(fd, wgt)\n  wgt = Transpose(wgd)")),
    ("inputs-quantized", "n_c2", ("c2 = Conv(r1d, w2d)", "c2 = Conv(r1, w2d)")),
    ("conv-add-fusion", "n_add", ("add = Add(c2, r1d)", "c2q = QuantizeLinear(c2, sa, z)\n  c2d = DequantizeLinear(c2q, sa, z)\n  add = Add(c2d, r1d)")),
    ("residual-quantized", "n_add", ("add = Add(c2, r1d)", "add = Add(c2, r1)")),
    ("qdq-pair", "n_xd", ("xd = DequantizeLinear(xq, sx, z)", "xd = DequantizeLinear(xq, sa, z)")),
    ("weight-range", "n_wgd", (f"int8[10, 4] wg = {_lit(WG)}", "int8[10, 4] wg = " + _lit(np.where(
        np.arange(40).reshape(10, 4) == 5, -128, WG).astype(np.int8)))),
    ("output-qdq", "n_yd", ("=> (float[1, 10] y)", "=> (float[1, 10] yd)")),
]


@pytest.mark.parametrize("rule, node, edit", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_broken_rule_is_found(rule: str, node: str, edit: tuple[str, str]) -> None:
    old, new = edit
    assert old in GOOD
    text = GOOD.replace(old, new).replace("int8 z = {0}", "int8 z = {0}, uint8 zu = {128}")
    if rule == "output-qdq":
        text = text.replace("y = Gemm<transB=1>(fd, wgd)", "y = Gemm<transB=1>(fd, wgd)\n  yq = QuantizeLinear(y, sp, z)\n  yd = DequantizeLinear(yq, sp, z)")
    if rule == "weight-axis":
        text = text.replace("int8[10, 4] wg", "int8[4, 10] wg").replace("wgd = DequantizeLinear<axis=0>(wg",
                                                                       "wgd = DequantizeLinear<axis=0>(wg_t")
        text = text.replace("wgt = Transpose(wgd)", "").replace("(fd, wgt)", "(fd, wgd)")
        text = text.replace("<axis=0>(wg_t, sg, z10)", "<axis=0>(wg, s1, z4)")
    model = _names(_model(text))
    found = check_tensorrt(model)
    assert (node, rule) in _rules(found), [str(v) for v in found]
    violation = next(v for v in found if v.rule == rule)
    assert rule in RULES and str(violation).startswith(f"{node}: [{rule}] ")


def test_zero_point_message_names_the_node_and_rule() -> None:
    model = _names(_model(GOOD.replace("int8[4] z4 = {0, 0, 0, 0}", "int8[4] z4 = {0, 3, 0, 0}")))
    messages = [str(v) for v in check_tensorrt(model)]
    assert "n_w1d: [zero-point] TensorRT needs zero point 0 for int8 weights (found [0, 3, 0, 0])" in messages


def test_onnxruntime_contrib_ops_are_not_tensorrt_ops() -> None:
    text = """<ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[2, 4] x) => (float[2, 4] y) { y = com.microsoft.Gelu(x) }"""
    found = check_tensorrt(_names(_model(text)))
    assert [str(v) for v in found] == [
        "n_y: [onnx-domain] TensorRT's ONNX parser has no com.microsoft.Gelu (it needs a plugin); "
        "quantize for tensorrt without onnxruntime-specific fusions"]


def test_concat_inputs_share_one_scale() -> None:
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 2] a, float[1, 2] b) => (float[1, 4] y) <float sa = {0.1}, float sb = {0.2}, int8 z = {0}> {
      aq = QuantizeLinear(a, sa, z)
      ad = DequantizeLinear(aq, sa, z)
      bq = QuantizeLinear(b, SCALE, z)
      bd = DequantizeLinear(bq, SCALE, z)
      y = Concat<axis=1>(ad, bd)
    }"""
    assert check_tensorrt(_model(text.replace("SCALE", "sa"))) == []
    found = check_tensorrt(_names(_model(text.replace("SCALE", "sb"))))
    assert _rules(found) == [("n_y", "concat-scale")]
    assert re.search(r"different scales .*0\.1.*0\.2", found[0].message)


def test_per_channel_below_opset_13_and_subgraphs() -> None:
    low = GOOD.replace('"" : 17', '"" : 12')
    proto = onnx.parser.parse_model(low)  # NOTE: invalid at opset 12 on purpose (axis attribute)
    found = check_tensorrt(_names(ir.serde.deserialize_model(proto)))
    assert {v.rule for v in found} == {"per-channel-opset"}
    # A Conv inside an If branch with a float weight is found too.
    w = RNG.standard_normal((2, 1, 1, 1)).astype(np.float32)
    text = f"""<ir_version: 10, opset_import: ["" : 17]>
    g (bool c, float[1, 1, 4, 4] x) => (float[1, 2, 4, 4] y) <float[2, 1, 1, 1] W = {_lit(w)}> {{
      y = If(c) <
        then_branch = t () => (float[1, 2, 4, 4] o) {{ o = Conv(x, W) }},
        else_branch = e () => (float[1, 2, 4, 4] o2) {{ o2 = Conv(x, W) }}
      >
    }}"""
    found = check_tensorrt(_names(_model(text)))
    assert [v.rule for v in found] == ["inputs-quantized", "inputs-quantized"]
    assert all(v.severity == "warning" for v in found)


#: Every zoo model (the README: "TensorRT rules hold on every zoo model").
ZOO = ("bert_like", "crnn_ocr", "digits_cnn", "dynamic_transformer", "keras_cnn_op11", "keras_cnn_savedmodel",
       "keras_cnn_tflite", "lstm_gru", "lstm_gru_op12", "mobilenetv2_digits", "mobilenetv2_digits_op13",
       "resnet_digits", "resnet_digits_op11", "transformer_digits")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_quantized_for_tensorrt_passes_the_walker(name: str, tmp_path: Path) -> None:
    """Zoo models (residual Adds; MobileNetV2's between two convolutions; attention MatMuls)
    through ``onnxq.quantize`` (optimize, calibrate, static QDQ) with the tensorrt profile obey
    every rule and keep their accuracy."""
    import onnxq
    from models import zoo
    from onnxq.ir.io import load_model, save_model

    zoo.ensure_built([name])
    model = load_model(zoo.model_path(name))
    calib = zoo.load_calib(name)
    samples = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(32)]
    model, report = onnxq.quantize(model, samples, target="tensorrt", self_check=False)
    ops = [n.op_type for n in model.graph]
    assert ops.count("DequantizeLinear") > 0
    assert [str(v) for v in check_tensorrt(model)] == []
    out = tmp_path / "trt.onnx"
    save_model(model, out)
    # NOTE: scored as written (no onnxruntime CPU fusion): TensorRT accumulates int8 products in int32,
    # which the QDQ semantics compute exactly; onnxruntime's u8s8 kernels on AVX2 would saturate.
    assert zoo.evaluate(name, out, optimize=False) >= zoo.evaluate(name) - 0.01


def test_c2f_concat_reads_float_tensors_for_tensorrt() -> None:
    # YOLOv8's C2f block: a Split output feeds a Conv (quantized input) and the Concat that joins
    # the branches; the Concat must not mix that Conv's DQ with float inputs.
    import onnxq

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[1, 8, 8, 8] x) => (float[1, 8, 8, 8] y) {
      a, b = Split<axis = 1, num_outputs = 2>(x)
      c = Conv<pads = [1, 1, 1, 1]>(b, w1)
      r = Relu(c)
      cat = Concat<axis = 1>(a, b, r)
      y = Conv(cat, w2)
    }
    """)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2, "w1"),
        onnx.numpy_helper.from_array(rng.standard_normal((8, 12, 1, 1)).astype(np.float32) * 0.2, "w2"),
    ])
    feeds = [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(8)]
    model, _ = onnxq.quantize(ir.from_proto(proto), feeds, target="tensorrt", self_check=False)
    assert not [v for v in check_tensorrt(model) if v.rule == "concat-scale"], check_tensorrt(model)
    concat = next(n for n in model.graph if n.op_type == "Concat")
    assert all(v.producer() is None or v.producer().op_type != "DequantizeLinear" for v in concat.inputs)
    want = runtime.run(ir.from_proto(proto), feeds[0])["y"]
    got = runtime.run(model, feeds[0])["y"]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
