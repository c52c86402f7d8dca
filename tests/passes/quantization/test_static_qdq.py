"""insert-qdq + quantize-weights on tiny graphs: valid, close to FP32, and fused by onnxruntime.

Every case checks (a) the full onnx checker, (b) outputs within a tolerance of FP32 stated as a
fraction of the reference output's range (one 8-bit step is 1/255 = 0.4%), and (c) fusion: the
graph onnxruntime runs (ORT_ENABLE_ALL, saved and read back) has the expected integer kernels,
no float copy of a quantized op, and Q/DQ only at the float boundaries of the model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.calibration.ranges import Ranges, TensorRange
from onnxq.framework.base import Severity
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import apply
from onnxq.framework.registry import PassRegistry
from onnxq.passes.quantization import InsertQDQ, QuantizeWeights, static_pipeline, tensors_to_calibrate
from onnxq.targets import get_target
from tests.passes.quantization.qdq_helpers import (
    HOST,
    build,
    full_check,
    leftover_qdq,
    op_counts,
    optimized_ops,
    quantize,
    run,
)

VNNI = get_target("ort-cpu", cpu="vnni")
AVX2 = get_target("ort-cpu", cpu="avx2")
# NOTE: numeric checks quantize for the CPU that runs them (HOST); VNNI and AVX2 graphs made on any
# machine get structure checks here and numpy references in tests/targets/test_u8s8_arithmetic.py.


def feeds_for(model: ir.Model, n: int = 8, seed: int = 1, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feed = {}
        for value in model.graph.inputs:
            shape = [d if isinstance(d, int) else 2 for d in value.shape]
            feed[value.name] = (scale * rng.standard_normal(shape)).astype(np.float32)
        out.append(feed)
    return out


def quantize_and_check(model: ir.Model, tol: float, **kwargs):
    """Quantizes in place; asserts checker + closeness (tol x reference range). Returns result, ops."""
    feeds = feeds_for(model, scale=kwargs.pop("input_scale", 1.0))
    reference = [run(model, f, optimize=False) for f in feeds]
    result = quantize(model, feeds, **kwargs)
    full_check(model)
    for feed, want in zip(feeds, reference, strict=True):
        got = run(model, feed)
        for w, g in zip(want, got, strict=True):
            span = float(w.max() - w.min()) or 1.0
            err = float(np.abs(w - g).max())
            assert err <= tol * span, f"max error {err:.4g} > {tol} x range {span:.4g}"
    return result, optimized_ops(model)


FLOAT_COMPUTE = (
    "Conv",
    "FusedConv",
    "MatMul",
    "Gemm",
    "FusedGemm",
    "Add",
    "Relu",
    "Clip",
    "Concat",
    "MaxPool",
)


def assert_all_fused(ops, **expected: int) -> None:
    for op, count in expected.items():
        assert ops.get(op, 0) == count, f"{op}: {ops.get(op, 0)} != {count} in {dict(ops)}"
    for op in FLOAT_COMPUTE:
        assert ops.get(op, 0) == 0, f"float {op} left in {dict(ops)}"


H18 = '<ir_version: 10, opset_import: ["" : 18]>'


def test_conv_relu_is_one_qlinearconv_and_relu_is_absorbed() -> None:
    model = build(
        H18
        + """
g (float[1,3,16,16] x) => (float[1,8,16,16] y) {
  c = Conv<pads=[1,1,1,1]>(x, w, b)
  y = Relu(c)
}""",
        w=(8, 3, 3, 3),
        b=(8,),
    )
    assert tensors_to_calibrate(model, HOST) == ["x", "y"]  # Relu output, not the Conv's
    result, ops = quantize_and_check(model, tol=0.02)
    assert_all_fused(ops, QLinearConv=1)
    assert leftover_qdq(ops) == 2  # Q of the float input, DQ of the float output
    # the output Q sits after the Relu with zero point 0 (qmin), so ORT removes the Relu
    assert model.graph.initializers["y_zero_point"].const_value.numpy() == 0
    assert result.stats["insert-qdq.nodes_quantized"] == 1
    assert result.stats["quantize-weights.biases_quantized"] == 1


def test_conv_clip_0_6_is_absorbed() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  lo = Constant<value_float = 0.0>()
  hi = Constant<value_float = 6.0>()
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Clip(c, lo, hi)
  y = Conv(r, w2)
}""",
        w=(8, 3, 3, 3),
        w2=(4, 8, 1, 1),
    )
    _, ops = quantize_and_check(model, tol=0.03, input_scale=4.0)
    assert_all_fused(ops, QLinearConv=2)
    assert leftover_qdq(ops) == 2


def test_residual_add_and_head() -> None:
    model = build(
        H18
        + """
g (float[1,4,8,8] x) => (float[1,10] y) {
  c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv<pads=[1,1,1,1]>(r1, w2, b2)
  s = Add(c2, r1)
  r2 = Relu(s)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  y = Gemm<transB = 1>(f, wf, bf)
}""",
        w1=(4, 4, 3, 3),
        b1=(4,),
        w2=(4, 4, 3, 3),
        b2=(4,),
        wf=(10, 4),
        bf=(10,),
    )
    _, ops = quantize_and_check(model, tol=0.04)
    assert_all_fused(ops, QLinearConv=2, QLinearAdd=1, QLinearGlobalAveragePool=1, QGemm=1)
    assert leftover_qdq(ops) == 1  # only the input Q: QGemm writes the float output itself
    # Conv -> Q -> DQ -> Add: the Conv output is quantized before the residual Add
    c2_consumers = [
        u.node.op_type
        for u in next(n for n in model.graph if n.op_type == "Conv" and n.inputs[0].name != "x_dequantized")
        .outputs[0]
        .uses()
    ]
    assert c2_consumers == ["QuantizeLinear"]


def test_matmul_3d_activations_per_channel_on_n() -> None:
    model = build(
        H18
        + """
g (float[1,6,16] x) => (float[1,6,8] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}""",
        w1=(16, 32),
        w2=(32, 8),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QLinearMatMul=1, MatMulIntegerToFloat=1)
    axes = [
        n.attributes["axis"].as_int()
        for n in model.graph
        if n.op_type == "DequantizeLinear" and "axis" in n.attributes
    ]
    assert axes == [1, 1]
    assert leftover_qdq(ops) == 1


@pytest.mark.parametrize(("trans_b", "shape", "axis"), [(0, (16, 8), 1), (1, (8, 16), 0)])
def test_gemm_per_channel_axis_follows_trans_b(trans_b: int, shape: tuple[int, int], axis: int) -> None:
    model = build(
        H18
        + f"""
g (float[4,16] x) => (float[4,3] y) {{
  h = Gemm<transB = {trans_b}>(x, w, b)
  r = Relu(h)
  y = MatMul(r, w2)
}}""",
        w=shape,
        b=(8,),
        w2=(8, 3),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QGemm=1, MatMulIntegerToFloat=1)
    weight_dq = next(
        n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "w_quantized"
    )
    assert weight_dq.attributes["axis"].as_int() == axis
    assert weight_dq.inputs[1].const_value.numpy().shape == (8,)


def test_concat_of_two_convs() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa)
  ra = Relu(a)
  b = Conv<pads=[1,1,1,1]>(x, wb)
  c = Concat<axis = 1>(ra, b)
  y = Conv(c, wc)
}""",
        wa=(4, 3, 3, 3),
        wb=(4, 3, 3, 3),
        wc=(4, 8, 1, 1),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QLinearConv=3, QLinearConcat=1)
    assert leftover_qdq(ops) == 2


def test_maxpool_and_reshape_share_scale_and_zero_point() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,10] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Relu(c)
  p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)
  shape = Constant<value_ints = [1, 64]>()
  f = Reshape(p, shape)
  y = Gemm<transB = 1>(f, wf)
}""",
        w=(4, 3, 3, 3),
        wf=(10, 64),
    )
    assert tensors_to_calibrate(model, HOST) == ["r", "x"]  # p and f share r's range
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QLinearConv=1, QGemm=1)
    quantizers = {n.inputs[0].name: n for n in model.graph if n.op_type == "QuantizeLinear"}
    assert set(quantizers) == {"x", "r", "p", "f"}
    for name in ("p", "f"):
        assert quantizers[name].inputs[1] is quantizers["r"].inputs[1]
        assert quantizers[name].inputs[2] is quantizers["r"].inputs[2]
    assert leftover_qdq(ops) == 1


def test_fan_out_gets_one_q_and_a_dq_per_consumer() -> None:
    model = build(
        H18
        + """
g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w1)
  r = Relu(c)
  a = Conv<pads=[1,1,1,1]>(r, w2)
  b = Conv(r, w3)
  s = Add(a, b)
  t = Add(s, r)
  y = Conv(t, w4)
}""",
        w1=(4, 4, 3, 3),
        w2=(4, 4, 3, 3),
        w3=(4, 4, 1, 1),
        w4=(4, 4, 1, 1),
    )
    _, ops = quantize_and_check(model, tol=0.04)
    q_of_r = [n for n in model.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "r"]
    assert len(q_of_r) == 1
    assert len(q_of_r[0].outputs[0].uses()) == 3  # one DQ for each of the three consumers
    assert_all_fused(ops, QLinearConv=4, QLinearAdd=2)


def test_float_ops_get_no_qdq() -> None:
    model = build(
        H18
        + """
g (float[1,4,8,8] x) => (float[1,2,9,9] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  t = Tanh(c)
  y = ConvTranspose(t, wt)
}""",
        w=(4, 4, 3, 3),
        wt=(4, 2, 2, 2),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert ops["QLinearConv"] == 1 and ops["ConvTranspose"] == 1
    quantized = {n.inputs[0].name for n in model.graph if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "c"}  # nothing on the Tanh output: ConvTranspose stays float
    assert "wt" in model.graph.initializers  # its weight stays float too


def test_lone_add_between_float_ops_is_left_alone() -> None:
    model = build(
        H18
        + """
g (float[2,8] x, float[2,8] z) => (float[2,8] y) {
  a = Tanh(x)
  b = Tanh(z)
  s = Add(a, b)
  y = Tanh(s)
}"""
    )
    before = ir.serde.serialize_model(model).SerializeToString()
    result = quantize(model, feeds_for(model))
    assert not result.modified
    assert ir.serde.serialize_model(model).SerializeToString() == before
    assert tensors_to_calibrate(model, HOST) == []


def test_opset_11_falls_back_to_per_tensor_and_says_so() -> None:
    model = build(
        '<ir_version: 7, opset_import: ["" : 11]>'
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w, b)
  y = Relu(c)
}""",
        w=(4, 3, 3, 3),
        b=(4,),
    )
    result, ops = quantize_and_check(model, tol=0.03)
    assert any("per-tensor" in d.message for d in result.diagnostics)
    assert all("axis" not in n.attributes for n in model.graph if n.op_type == "DequantizeLinear")
    assert_all_fused(ops, QLinearConv=1)


def _one_conv(weights: np.ndarray, bias: np.ndarray) -> ir.Model:
    return build(
        H18
        + """
g (float[1,3,4,4] x) => (float[1,4,4,4] y) {
  y = Conv(x, w, b)
}""",
        w=weights,
        b=bias,
    )


def test_bias_overflow_inflates_weight_scale() -> None:
    bias = np.array([500.0, -400.0, 0.1, 0.0], np.float32)
    weights = (np.random.default_rng(0).standard_normal((4, 3, 1, 1)) * 1e-4).astype(np.float32)
    model = _one_conv(weights, bias)
    result, ops = quantize_and_check(model, tol=0.03, input_scale=1e-6)
    warnings = [d for d in result.diagnostics if d.severity == Severity.WARNING and "int32" in d.message]
    assert warnings and "inflated" in warnings[0].message
    qb = model.graph.initializers["b_quantized"].const_value.numpy()
    assert np.abs(qb.astype(np.int64)).max() < 2**31 - 1
    assert_all_fused(ops, QLinearConv=1)


def test_dead_channels_with_a_big_bias_are_said_quietly_and_lose_nothing() -> None:
    # BatchNorm folding of a channel whose scale is ~0 leaves weights ~1e-30 and its shift as bias:
    # the channel's output is the bias either way, so the raised scale is not worth a warning
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    weights[1] = 1e-30
    bias = np.array([0.1, 3.0, -0.2, 0.0], np.float32)
    model = _one_conv(weights, bias)
    result, ops = quantize_and_check(model, tol=0.03)
    said = [d for d in result.diagnostics if "int32" in d.message]
    assert said and all(d.severity == Severity.INFO and "weights ~0" in d.message for d in said), said
    assert any(k.endswith("dead_channels") and v == 1 for k, v in result.stats.items()), result.stats
    assert_all_fused(ops, QLinearConv=1)


@pytest.mark.parametrize("pattern", ["conv_b", "Conv", "conv_[b-z]"])
def test_exclude_by_name_op_type_or_regex(pattern: str) -> None:
    text = (
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa)
  r = Relu(a)
  y = Conv(r, wb)
}"""
    )
    model = build(text, wa=(4, 3, 3, 3), wb=(4, 4, 1, 1))
    for node, name in zip(model.graph, ["conv_a", "relu", "conv_b"], strict=True):
        node.name = name
    result, ops = quantize_and_check(model, tol=0.03, exclude=(pattern,))
    expected = 0 if pattern == "Conv" else 1
    assert ops.get("QLinearConv", 0) == expected
    assert any(d.node == "conv_b" and "excluded" in d.message for d in result.diagnostics)
    assert "wb" in model.graph.initializers  # an excluded node keeps its float weight


def test_weights_behind_identity_reshape_and_constant_are_found() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  wi = Identity(w)
  shape = Constant<value_ints = [4, 3, 3, 3]>()
  wr = Reshape(wi, shape)
  c = Conv<pads=[1,1,1,1]>(x, wr)
  y = Relu(c)
}""",
        w=(4, 27),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QLinearConv=1)
    assert "w" not in model.graph.initializers and not any(n.op_type == "Reshape" for n in model.graph)


def test_if_body_reading_a_quantized_tensor_stays_valid() -> None:
    model = build(
        H18
        + """
g (bool cond, float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Relu(c)
  y = If(cond) <
    then_branch = t () => (float[1,4,8,8] o) { o = Conv(r, w2) },
    else_branch = e () => (float[1,4,8,8] o2) { o2 = Neg(r) }
  >
}""",
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
    )
    rng = np.random.default_rng(0)
    feeds = [
        {"cond": np.array(b), "x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
        for b in (True, False) * 3
    ]
    reference = [run(model, f, optimize=False) for f in feeds]
    quantize(model, feeds)
    full_check(model)
    for feed, want in zip(feeds, reference, strict=True):
        got = run(model, feed)
        assert np.abs(got[0] - want[0]).max() <= 0.03 * (want[0].max() - want[0].min())
    assert optimized_ops(model)["QLinearConv"] == 1  # the main-graph Conv fused


def test_attention_like_chain_fuses() -> None:
    model = build(
        H18
        + """
g (float[1,6,8] x) => (float[1,6,8] y) {
  q = MatMul(x, wq)
  k = MatMul(x, wk)
  v = MatMul(x, wv)
  kt = Transpose<perm = [0, 2, 1]>(k)
  s = MatMul(q, kt)
  half = Constant<value_float = 0.35>()
  z = Mul(s, half)
  p = Softmax<axis = -1>(z)
  a = MatMul(p, v)
  y = MatMul(a, wo)
}""",
        wq=(8, 8),
        wk=(8, 8),
        wv=(8, 8),
        wo=(8, 8),
    )
    _, ops = quantize_and_check(model, tol=0.06)
    assert ops["QLinearSoftmax"] == 1 and ops["QLinearMul"] == 1
    assert ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] == 6
    assert ops.get("MatMul", 0) == 0 and ops.get("Softmax", 0) == 0


def test_missing_range_leaves_consumers_float_with_a_warning() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Relu(c)
  y = Conv(r, w2)
}""",
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
    )
    ranges = Ranges({"x": TensorRange(-3.0, 3.0)})  # no range for r
    ctx = PassContext.with_resources([HOST, ranges])
    result = apply(model, static_pipeline(HOST), ctx)
    full_check(model)
    assert any("no calibrated range for tensor 'r'" in d.message for d in result.diagnostics)
    assert op_counts(model)["QuantizeLinear"] == 0  # both Convs need r: nothing quantized


def test_output_is_deterministic_and_the_pass_idempotent() -> None:
    text = (
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w, b)
  r = Relu(c)
  y = Conv(r, w2)
}"""
    )
    blobs = []
    for _ in range(2):
        model = build(text, w=(4, 3, 3, 3), b=(4,), w2=(4, 4, 1, 1))
        quantize(model, feeds_for(model))
        blobs.append(ir.serde.serialize_model(model).SerializeToString())
    assert blobs[0] == blobs[1]
    again = InsertQDQ().run(model, PassContext.with_resources([HOST, Ranges({})]))
    assert not again.modified
    assert not QuantizeWeights().run(model, PassContext.with_resources([HOST])).modified
    assert ir.serde.serialize_model(model).SerializeToString() == blobs[1]


def test_avx2_target_uses_7bit_weights() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  y = Relu(c)
}""",
        w=(4, 3, 3, 3),
    )
    vnni = model.clone()
    _, ops = quantize_and_check(model, tol=0.03, target=AVX2)
    q = model.graph.initializers["w_quantized"].const_value.numpy()
    assert q.min() >= -64 and q.max() <= 64 and np.abs(q).max() == 64
    assert_all_fused(ops, QLinearConv=1)
    # Structure only: full 8-bit weights are exact on VNNI, and saturate here when this is AVX2.
    quantize(vnni, feeds_for(vnni), target=VNNI)
    assert np.abs(vnni.graph.initializers["w_quantized"].const_value.numpy()).max() == 127


def test_passes_are_registered_and_print_their_options() -> None:
    registry = PassRegistry.default()
    pipeline = registry.parse("insert-qdq{exclude=conv_1:Softmax},quantize-weights{per_channel=false}")
    assert str(pipeline) == "insert-qdq{exclude=conv_1:Softmax},quantize-weights{per_channel=false}"
    assert pipeline.passes[0].options.exclude == ("conv_1", "Softmax")


def test_gemm_row_bias_and_conv1d_fuse() -> None:
    model = build(
        H18
        + """
g (float[4,16] x, float[1,3,16] s) => (float[4,3] y, float[1,4,16] z) {
  h = Gemm<transB = 1>(x, w, b)
  r = Relu(h)
  y = MatMul(r, w2)
  c = Conv<pads=[1,1]>(s, wc, bc)
  rc = Relu(c)
  z = Conv(rc, wc2)
}""",
        w=(8, 16),
        b=np.full((1, 8), 0.1, np.float32),
        w2=(8, 3),
        wc=(4, 3, 3),
        bc=(4,),
        wc2=(4, 4, 1),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert_all_fused(ops, QGemm=1, MatMulIntegerToFloat=1, QLinearConv=2)


def test_below_opset_10_nothing_is_inserted() -> None:
    model = build(
        '<ir_version: 4, opset_import: ["" : 9]>'
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  y = Relu(c)
}""",
        w=(4, 3, 3, 3),
    )
    result = quantize(model, feeds_for(model))
    assert not result.modified
    assert any("no QuantizeLinear" in d.message for d in result.diagnostics)


def test_tensors_to_calibrate_does_not_touch_the_model() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  t = Tanh(c)
  y = Conv(t, w2)
}""",
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
    )
    before = ir.serde.serialize_model(model).SerializeToString()
    # the last Conv's output is a graph output: quantized too, so the Conv runs on QLinearConv
    assert tensors_to_calibrate(model, HOST) == ["c", "t", "x", "y"]
    assert tensors_to_calibrate(model, HOST, exclude=("Conv",)) == []
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_conv_reading_a_dq_but_left_float_keeps_its_float_weight() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Relu(c)
  y = Conv(r, w2)
  z = Conv(r, w3)
}""",
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
        w3=(4, 4, 1, 1),
    )
    feeds = feeds_for(model)
    reference = [run(model, f, optimize=False) for f in feeds]
    from tests.passes.quantization.qdq_helpers import minmax_ranges

    ranges = minmax_ranges(model, feeds, ["x", "r", "y"])  # nothing for z
    result = apply(model, static_pipeline(HOST), PassContext.with_resources([HOST, ranges]))
    full_check(model)
    assert any("no calibrated range for tensor 'z'" in d.message for d in result.diagnostics)
    assert "w3" in model.graph.initializers and "w2" not in model.graph.initializers
    z_conv = next(n for n in model.graph if n.op_type == "Conv" and n.outputs[0].name == "z")
    assert z_conv.inputs[0].producer().op_type == "DequantizeLinear"  # r is quantized for y's Conv
    assert any("output is not quantized" in d.message for d in result.diagnostics)
    for feed, want in zip(feeds, reference, strict=True):
        for w_, g in zip(want, run(model, feed), strict=True):
            assert np.abs(w_ - g).max() <= 0.03 * (w_.max() - w_.min())
    ops = optimized_ops(model)
    assert ops["QLinearConv"] == 2


def test_a_model_quantized_by_another_tool_is_not_quantized_twice() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  s = Constant<value_float = 0.05>()
  z = Constant<value_uint8 = 128>()
  q = QuantizeLinear(x, s, z)
  d = DequantizeLinear(q, s, z)
  c = Conv<pads=[1,1,1,1]>(d, w)
  r = Relu(c)
  y = Conv(r, w2)
}""".replace("value_uint8 = 128", "value = uint8 {128}"),
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
    )
    result = quantize(model, feeds_for(model))
    full_check(model)
    first = next(n for n in model.graph if n.op_type == "Conv")
    assert first.inputs[0].name == "d"  # no second Q/DQ after the existing DQ
    assert any("already quantized" in d.message for d in result.diagnostics)


def test_include_limits_quantization_to_matching_nodes() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  a = Conv<pads=[1,1,1,1]>(x, wa)
  r = Relu(a)
  y = Conv(r, wb)
}""",
        wa=(4, 3, 3, 3),
        wb=(4, 4, 1, 1),
    )
    for node, name in zip(model.graph, ["conv_a", "relu", "conv_b"], strict=True):
        node.name = name
    assert tensors_to_calibrate(model, HOST, include=("conv_b",)) == ["r", "y"]
    _, ops = quantize_and_check(model, tol=0.03, include=("conv_b",))
    assert ops["QLinearConv"] == 1
    assert "wa" in model.graph.initializers and "wb" not in model.graph.initializers


def test_conv_before_an_unfolded_batchnorm_stays_float() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  n = BatchNormalization(c, gamma, beta, mean, var)
  r = Relu(n)
  y = Conv(r, w2)
}""",
        w=(4, 3, 3, 3),
        gamma=np.array([1.0, 50.0, 0.01, 2.0], np.float32),
        beta=np.zeros(4, np.float32),
        mean=np.zeros(4, np.float32),
        var=np.ones(4, np.float32),
        w2=(4, 4, 1, 1),
    )
    result, ops = quantize_and_check(model, tol=0.03)
    assert any("BatchNormalization that is not folded" in d.message for d in result.diagnostics)
    assert ops["QLinearConv"] == 1  # only the Conv after the BatchNorm


def test_yolo_like_neck_split_silu_resize_concat() -> None:
    model = build(
        H18
        + """
g (float[1,4,8,8] x) => (float[1,4,16,16] y, float[1,4,8,8] z) {
  c = Conv<pads=[1,1,1,1]>(x, w1)
  s = Sigmoid(c)
  a = Mul(c, s)
  p, q = Split<axis = 1, num_outputs = 2>(a)
  scales = Constant<value_floats = [1.0, 1.0, 2.0, 2.0]>()
  u = Resize<mode = "nearest">(p, , scales)
  l = Resize<mode = "linear">(q, , scales)
  k = Concat<axis = 1>(u, l)
  y = Conv(k, w2)
  z = Conv(a, w3)
}""",
        w1=(4, 4, 3, 3),
        w2=(4, 4, 1, 1),
        w3=(4, 4, 1, 1),
    )
    _, ops = quantize_and_check(model, tol=0.04)
    quantized = {n.inputs[0].name: n for n in model.graph if n.op_type == "QuantizeLinear"}
    # nearest Resize and Split run on int8: they share the SiLU output's scale; linear does not
    assert quantized["u"].inputs[1] is quantized["a"].inputs[1]
    assert quantized["p"].inputs[1] is quantized["a"].inputs[1]
    assert quantized["l"].inputs[1] is not quantized["a"].inputs[1]
    assert "q" not in quantized  # linear Resize stays float: no QDQ on its input
    assert ops["QLinearSigmoid"] == 1 and ops["QLinearMul"] == 1 and ops["QLinearConcat"] == 1
    assert ops["QLinearConv"] == 3 and ops.get("Conv", 0) == 0


def test_loop_body_reading_a_quantized_tensor_stays_valid() -> None:
    model = build(
        H18
        + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] acc_out) {
  c = Conv<pads=[1,1,1,1]>(x, w)
  r = Relu(c)
  y = Conv(r, w2)
  n = Constant<value = int64 {3}>()
  acc_out = Loop(n, , r) <
    body = b (int64 i, bool cond_in, float[1,4,8,8] acc) => (bool cond_out, float[1,4,8,8] acc2) {
      cond_out = Identity(cond_in)
      acc2 = Add(acc, r)
    }
  >
}""",
        w=(4, 3, 3, 3),
        w2=(4, 4, 1, 1),
    )
    _, ops = quantize_and_check(model, tol=0.03)
    assert ops["QLinearConv"] == 2
    loop = next(n for n in model.graph if n.op_type == "Loop")
    body_ops = [n.op_type for n in loop.attributes["body"].as_graph()]
    assert body_ops == ["Identity", "Add"]  # the body stays float


@pytest.mark.parametrize(
    ("lo", "hi"), [(0.0, 0.0), (1e-30, 2e-30), (-3.0, -1.0), (2.0, 5.0), (-1e-12, 1e-12), (-7.5, 2.5)]
)
def test_activation_scales_are_positive_finite_and_cover_zero(lo: float, hi: float) -> None:
    from onnxq.passes.quantization._common import activation_qparams

    p = activation_qparams(lo, hi, dtype=ir.DataType.UINT8, qrange=(0, 255), symmetric=False)
    assert np.isfinite(p.scale) and p.scale > 0 and 0 <= p.zero_point <= 255
    low, high = p.real_range(0, 255)
    assert low <= min(lo, 0.0) + p.scale and high >= max(hi, 0.0) - p.scale  # 0 and the range fit
    assert low <= 0.0 <= high


def test_clip_bounds_shrink_the_scale_until_ort_removes_the_clip() -> None:
    from onnxq.passes.quantization._common import activation_qparams, fit_inside

    p = activation_qparams(-1.0, 1.0, dtype=ir.DataType.UINT8, qrange=(0, 255), symmetric=False)
    fitted = fit_inside(p, (0, 255), -1.0, 1.0)
    assert fitted is not None
    # onnxruntime's ClipQuantFusion condition (half a step inside each bound)
    assert -1.0 <= (0 - fitted.zero_point + 0.5) * fitted.scale
    assert (255 - fitted.zero_point - 0.5) * fitted.scale <= 1.0


def test_front_end_feeding_square_and_log_stays_float_and_the_network_after_it_is_int8() -> None:
    # A constant-Q-like front end: a fixed-kernel Conv1d, squared, plus eps, log; then a learned Conv.
    model = build(
        H18
        + """
g (float[1,1,64] x) => (float[1,4,64] y) {
  eps = Constant<value_float = 1e-6>()
  f = Conv<pads=[2,2]>(x, wf)
  sq = Mul(f, f)
  e = Add(sq, eps)
  l = Log(e)
  c = Conv<pads=[1,1]>(l, w, b)
  y = Relu(c)
}""",
        wf=(8, 1, 5),
        w=(4, 8, 3),
        b=(4,),
    )
    result, ops = quantize_and_check(model, tol=0.03)
    reasons = [d.message for d in result.diagnostics if "Log" in d.message]
    assert reasons and "relative precision of small values" in reasons[0]
    assert ops.get("QLinearConv", 0) == 1  # the learned Conv after the log is integer
    assert op_counts(model)["Conv"] == 2 and not any(
        v.name == "wf_quantized" for v in model.graph.initializers.values())
