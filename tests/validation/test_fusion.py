"""Fusion report: which QDQ groups onnxruntime CPU turned into integer kernels, and why not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.validation.fusion import FusionCheckError, fusion_report, remove_unfused_qdq, unfused_groups
from tests.validation._graphs import (
    ADD_RELU_MEAN,
    FUSES,
    LAYERNORM,
    MIXED,
    RELU_ZP128,
    SHARED,
    _ints,
    feeds,
    model,
)


def test_fully_fused_graph() -> None:
    report = fusion_report(model(FUSES))
    assert report.unfused == []
    assert report.kernels == {"NhwcMaxPool": 1, "QLinearConv": 1, "QLinearMatMul": 1}
    kernels = {g.node: g.kernel for g in report.groups}
    assert kernels["Conv_3"] == "QLinearConv"
    assert kernels["MatMul_14"] == "QLinearMatMul"
    assert kernels["MaxPool_7"] == "NhwcMaxPool"
    assert kernels["Reshape_10"].endswith("(int8)")
    # The only Q/DQ left are at the model's edges.
    assert (report.quantize_linear, report.dequantize_linear) == (1, 1)
    assert report.lines()[0].startswith("fusion: 4/4 QDQ groups fused")


def test_relu_with_zero_point_128_stays_float() -> None:
    report = fusion_report(model(RELU_ZP128))
    [group] = report.unfused
    assert group.node == "Conv_3"
    assert group.kernel == "FusedConv"
    assert "zero point 128 after Relu" in group.reason
    assert group.wasted  # the input pair on x serves nothing but the float Conv
    assert str(group).startswith("Conv_3: stayed float (FusedConv): output Q has zero point 128 after Relu")
    assert report.kernels == {}


def test_lone_qdq_around_layernorm() -> None:
    [group] = unfused_groups(model(LAYERNORM))
    assert (group.node, group.kernel) == ("LayerNormalization_2", "LayerNormalization")
    assert "no integer kernel for LayerNormalization" in group.reason


def test_unquantized_input_and_wrong_per_channel_axis() -> None:
    report = fusion_report(model(MIXED))
    reasons = {g.node: g.reason for g in report.unfused}
    assert set(reasons) == {"Add_2", "MatMul_6"}
    assert "input 1 'b' is not quantized" in reasons["Add_2"]
    assert "per-channel weight on axis 0" in reasons["MatMul_6"]


def test_unnamed_nodes_get_index_names(tmp_path) -> None:
    proto = ir.to_proto(model(RELU_ZP128))
    for node in proto.graph.node:
        node.name = ""
    path = tmp_path / "unnamed.onnx"
    onnx.save(proto, path)
    [group] = fusion_report(path).unfused
    assert group.node == "Conv_3"


def test_remove_unfused_qdq_around_layernorm_matches_float() -> None:
    m = model(LAYERNORM)
    x = feeds(m)
    reference = runtime.run(parse_float_layernorm(), x)
    removed = remove_unfused_qdq(m, fusion_report(m))
    assert removed == 4
    assert [n.op_type for n in m.graph] == ["LayerNormalization"]
    assert [v.name for v in m.graph.outputs] == ["y"]
    onnx.checker.check_model(ir.to_proto(m), full_check=True)
    got = runtime.run(m, x)
    np.testing.assert_allclose(got["y"], reference["y"], rtol=1e-6, atol=1e-6)
    # Idempotent: nothing more to remove, and the LayerNormalization is no longer a QDQ group.
    assert remove_unfused_qdq(m, fusion_report(m)) == 0
    assert fusion_report(m).groups == []


def parse_float_layernorm() -> ir.Model:
    from tests.conftest import parse

    return parse("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2,16] x) => (float[2,16] y) <float[16] gamma = {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}> {
      y = LayerNormalization <axis=-1> (x, gamma)
    }
    """)


def test_remove_unfused_qdq_keeps_fused_groups() -> None:
    m = model(FUSES)
    before = runtime.run(m, feeds(m))
    assert remove_unfused_qdq(m, fusion_report(m)) == 0
    np.testing.assert_array_equal(runtime.run(m, feeds(m))["y"], before["y"])


def test_remove_between_float_groups_stays_close_to_the_qdq_result() -> None:
    # Add (one input float) and MatMul (axis 0) both stay float: all three activation pairs go.
    m = model(MIXED)
    x = feeds(m)
    before = runtime.run(m, x)
    removed = remove_unfused_qdq(m, fusion_report(m))
    assert removed == 6
    assert [n.op_type for n in m.graph] == ["Add", "DequantizeLinear", "MatMul"]
    onnx.checker.check_model(ir.to_proto(m), full_check=True)
    # Without the fake quantization the result moves towards float: within a few output steps.
    np.testing.assert_allclose(runtime.run(m, x)["y"], before["y"], atol=3 * 0.05)


def test_remove_keeps_qdq_that_a_fused_neighbour_needs() -> None:
    m = model(SHARED)
    x = feeds(m)
    before = runtime.run(m, x)
    report = fusion_report(m)
    assert [g.node for g in report.unfused] == ["LayerNormalization_6"]
    assert report.wasted == report.unfused
    assert remove_unfused_qdq(m, report) == 2  # only the LayerNormalization's output pair
    after = fusion_report(m)
    assert after.kernels == {"QLinearMatMul": 1}
    # Still float, but the DQ it reads is the MatMul's: nothing left to gain.
    [group] = after.unfused
    assert not group.wasted and str(group).endswith("its Q/DQ serve fused neighbours")
    np.testing.assert_array_equal(runtime.run(m, x)["y"], before["y"])
    np.testing.assert_allclose(runtime.run(m, x)["z"], before["z"], atol=0.05 / 2 + 1e-6)


def test_relu_absorbed_into_a_fused_add_keeps_its_q() -> None:
    m = model(ADD_RELU_MEAN)
    report = fusion_report(m)
    assert report.kernels == {"QLinearAdd": 1}
    [mean] = report.unfused
    assert mean.node == "ReduceMean_8" and not mean.wasted
    assert remove_unfused_qdq(m, report) == 0
    assert fusion_report(m).kernels == {"QLinearAdd": 1}


def test_model_onnxruntime_refuses_is_reported(tmp_path) -> None:
    proto = ir.to_proto(model(LAYERNORM))
    proto.graph.node[0].op_type = "NoSuchOp"
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    with pytest.raises(FusionCheckError, match="onnxruntime cannot load"):
        fusion_report(path)


def _conv_u8s8(weight_max: int) -> ir.Model:
    from tests.conftest import parse

    values = ",".join(str(v) for v in np.linspace(-weight_max, weight_max, 108).round().astype(int))
    return parse(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float s = {{0.02}}, uint8 zp = {{128}},
        int8[4,3,3,3] w = {{{values}}}, float ws = {{0.01}}, int8 wzp = {{0}}> {{
      xq = QuantizeLinear(x, s, zp)
      xd = DequantizeLinear(xq, s, zp)
      wd = DequantizeLinear(w, ws, wzp)
      c = Conv <pads=[1,1,1,1]> (xd, wd)
      cq = QuantizeLinear(c, s, zp)
      y = DequantizeLinear(cq, s, zp)
    }}""")


def test_saturation_warning_only_for_full_range_weights_on_avx2_without_vnni() -> None:
    full, reduced = _conv_u8s8(127), _conv_u8s8(64)
    [warning] = fusion_report(full, cpu="avx2").warnings
    assert warning.startswith("u8s8 with full-range int8 weights on AVX2 without VNNI") and "Conv_" in warning
    assert fusion_report(full, cpu="vnni").warnings == []
    assert fusion_report(reduced, cpu="avx2").warnings == []


@pytest.mark.parametrize(("flag", "warns"), [("avx512_vnni", False), ("avx512vnni", False), ("avxvnni", False),
                                             ("fma", True)])
def test_saturation_warning_follows_the_one_cpu_detection(monkeypatch: pytest.MonkeyPatch, flag: str,
                                                          warns: bool) -> None:
    # No CPU given: the kind comes from targets.ort_cpu.detect_cpu, the only reader of /proc/cpuinfo
    # (it knows every spelling of the VNNI flags).
    import onnxq.targets.ort_cpu as ort_cpu

    real = ort_cpu.detect_cpu
    monkeypatch.delenv("ONNXQ_CPU", raising=False)
    monkeypatch.setattr(ort_cpu, "detect_cpu", lambda: real(f"flags\t: sse avx avx2 {flag}\n", "x86_64"))
    assert bool(fusion_report(_conv_u8s8(127)).warnings) is warns


def test_conv_integer_is_counted_and_warned() -> None:
    from tests.conftest import parse

    m = parse("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (uint8[1,3,8,8] x) => (int32[1,4,6,6] y) <uint8[4,3,3,3] w = {""" + ",".join(["1"] * 108) + """}> {
      y = ConvInteger(x, w)
    }""")
    report = fusion_report(m)
    assert report.kernels == {"ConvInteger": 1} and report.groups == []
    assert report.warnings[0].startswith("ConvInteger present (1 nodes): slow on x86")


def _conv(extra_out: str = "", t: str = "uint8", opset: int = 18) -> str:
    return f"""
<ir_version: 10, opset_import: ["" : {opset}]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y{extra_out}) <float s = {{0.02}}, {t} zp = {{0}}, int8[4,3,3,3] w = {{{_ints(108)}}}, float ws = {{0.01}}, int8 wzp = {{0}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  c = Conv <pads=[1,1,1,1]> (xd, wd)
  cq = QuantizeLinear(c, s, zp)
  y = DequantizeLinear(cq, s, zp)
  {"z = Sigmoid(c)" if extra_out else ""}
}}
"""
_POOL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,4,8,8] x) => (float[1,4,4,4] y) <float s = {0.02}, float s2 = {0.04}, uint8 zp = {0}> {
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (xd)
  pq = QuantizeLinear(p, s2, zp)
  y = DequantizeLinear(pq, s2, zp)
}
"""
_FAN = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] y2) <float s = {{0.02}}, int8 zp = {{0}}, int8[4,3,3,3] w = {{{_ints(108)}}}, int8[4,3,3,3] w2 = {{{_ints(108, 5)}}}, float ws = {{0.01}}, int8 wzp = {{0}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  xd2 = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  wd2 = DequantizeLinear(w2, ws, wzp)
  c = Conv <pads=[1,1,1,1]> (xd, wd)
  cq = QuantizeLinear(c, s, zp)
  y = DequantizeLinear(cq, s, zp)
  c2 = Conv <pads=[1,1,1,1]> (xd2, wd2)
  cq2 = QuantizeLinear(c2, s, zp)
  y2 = DequantizeLinear(cq2, s, zp)
}}
"""


@pytest.mark.parametrize(
    ("text", "node", "reason"),
    [
        (_conv(", float[1,4,8,8] z"), "Conv_3", "output 'c' feeds 2 nodes; the selector needs one QuantizeLinear"),
        (_conv(t="uint16", opset=21), "Conv_3", "uint16 DequantizeLinear 'DequantizeLinear_1': ORT CPU fuses only 8-bit"),
        (_POOL, "MaxPool_2", "input DequantizeLinear and output QuantizeLinear have different scale/zero point"),
        (_FAN, "Conv_5", "int8 activation 'xq' feeds 2 nodes; on x86 ORT rewrites int8 Q/DQ to uint8 only"),
    ],
)
def test_reasons_groups_stay_float(text: str, node: str, reason: str) -> None:
    groups = {g.node: g for g in fusion_report(model(text)).unfused}
    assert node in groups and reason in (groups[node].reason or ""), [str(g) for g in groups.values()]


def test_remove_unfused_qdq_is_deterministic_and_idempotent() -> None:
    first, second = model(MIXED), model(MIXED)
    assert remove_unfused_qdq(first, fusion_report(first)) == remove_unfused_qdq(second, fusion_report(second))
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()
    assert remove_unfused_qdq(first, fusion_report(first)) == 0


def test_qdq_inside_subgraphs_is_said_not_analysed() -> None:
    from tests.conftest import parse

    m = parse("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (bool c, float[2] x) => (float[2] y) <float s = {0.1}, uint8 zp = {128}> {
      y = If(c) <
        then_branch = t () => (float[2] a) { q = QuantizeLinear(x, s, zp)  a = DequantizeLinear(q, s, zp) },
        else_branch = e () => (float[2] b) { b = Relu(x) }
      >
    }""")
    report = fusion_report(m)
    assert report.notes == ["2 Q/DQ node(s) inside If/Loop/Scan bodies are not analysed (main graph only)"]
    assert report.groups == [] and "note: 2 Q/DQ" in report.lines()[-1]


def test_named_file_with_external_data_is_read_in_place(tmp_path) -> None:
    from onnxq.ir.io import save_model

    m = _conv_u8s8(127)
    for i, node in enumerate(m.graph):
        node.name = f"n{i}"
    save_model(m, tmp_path / "m.onnx", external_data=True)
    report = fusion_report(tmp_path / "m.onnx", cpu="avx2")
    assert report.kernels == {"QLinearConv": 1}
    # The saturation rule read the int8 weights from the input's own data file.
    assert "n3" in report.warnings[0]
