"""--target xnnpack: qc8 QDQ that XNNPACK's EP takes, and ``check --target xnnpack`` naming what it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import onnxq
from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import save_model
from onnxq.targets import get_target, xnnpack
from tests.passes.quantization.qdq_helpers import build


def _samples() -> list[dict[str, np.ndarray]]:
    with np.load(example_inputs_path()) as npz:
        return [{"input": row[None]} for row in npz["input"][:64]]


def test_profile_is_qc8() -> None:
    target = get_target("xnnpack")
    assert target.activation_dtype == ir.DataType.INT8 and not target.activation_symmetric
    assert target.weight_dtype == ir.DataType.INT8 and target.weight_symmetric and target.per_channel
    assert target.integer_ops == {"Conv", "ConvTranspose"} and "MaxPool" in target.data_movement_ops
    assert {"Softmax", "AveragePool", "Gemm", "MatMul"} <= target.float_ops
    with pytest.raises(onnxq.errors.UserError, match="does not apply"):
        get_target("xnnpack", cpu="avx2")


def test_quantized_for_xnnpack_every_conv_is_a_qc8_unit_and_keeps_its_answers() -> None:
    model = onnxq.load_model(example_model_path())
    quantized, report = onnxq.quantize(model, _samples(), target="xnnpack")
    found = xnnpack.partition(quantized)
    # NOTE: 3 Conv (qc8 units), 2 MaxPool (int8), the float Gemm; only the Reshape has no XNNPACK kernel
    assert [(x.op, x.reason) for x in found.left] == [("Reshape", "XNNPACK has no Reshape kernel")], found.left
    assert found.taken == found.nodes - 1
    for node in quantized.graph:
        if node.op_type == "Conv":
            dq = node.inputs[1].producer()
            assert dq.inputs[0].const_value.dtype == ir.DataType.INT8 and dq.inputs[1].const_value.shape[0] > 1
            assert not np.any(dq.inputs[2].const_value.numpy())
    assert {n.inputs[2].const_value.dtype for n in quantized.graph if n.op_type == "QuantizeLinear"} == {
        ir.DataType.INT8}
    check = report.self_check
    (out,) = check.outputs  # NOTE: the QDQ reference arithmetic: XNNPACK is not in the Linux x86 wheel
    assert out.top1_agreement is not None and out.top1_agreement >= 0.95, out
    assert any("xnnpack cannot run here" in n for n in check.notes)


def test_an_ort_cpu_u8s8_graph_is_named_conv_by_conv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quantized, _ = onnxq.quantize(onnxq.load_model(example_model_path()), _samples(), target="ort-cpu",
                                  self_check=False)
    path = tmp_path / "u8s8.onnx"
    save_model(quantized, path)
    assert main(["check", str(path), "--target", "xnnpack", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    convs = [f for f in findings if f["rule"] == "xnnpack-nodes" and f["message"].startswith("Conv ")]
    assert len(convs) == 3 and all("no u8s8" in f["message"] and f["node"] for f in convs), convs
    [summary] = [f for f in findings if f["rule"] == "xnnpack-nodes" and f["severity"] == "info"]
    assert summary["message"].startswith("2/10 nodes on XNNPACK"), summary


# What XNNPACK refuses in QDQ form: int8 AveragePool and Softmax (uint8 only), a per-channel
# ConvTranspose, a Conv whose H / W are unknown.
REFUSED = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 8, 8] x, float[1, 4, H, W] v) => (float[1, 4, 4, 4] y, float[1, 4, 16, 16] t, float[1, 4, 8, 8] s,
                                                 float[1, 4, H, W] c) {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  p = AveragePool<kernel_shape = [2, 2], strides = [2, 2]>(xd)
  pq = QuantizeLinear(p, xs, xz)
  y = DequantizeLinear(pq, xs, xz)
  xd2 = DequantizeLinear(xq, xs, xz)
  td = DequantizeLinear<axis = 1>(tq, ts, tz)
  tc = ConvTranspose<strides = [2, 2], kernel_shape = [2, 2]>(xd2, td)
  tcq = QuantizeLinear(tc, xs, xz)
  t = DequantizeLinear(tcq, xs, xz)
  xd3 = DequantizeLinear(xq, xs, xz)
  sm = Softmax<axis = -1>(xd3)
  smq = QuantizeLinear(sm, ss, xz)
  s = DequantizeLinear(smq, ss, xz)
  vq = QuantizeLinear(v, xs, xz)
  vd = DequantizeLinear(vq, xs, xz)
  wd = DequantizeLinear<axis = 0>(wq, ws, wz)
  cv = Conv<pads = [1, 1, 1, 1]>(vd, wd)
  cq = QuantizeLinear(cv, xs, xz)
  c = DequantizeLinear(cq, xs, xz)
}"""


def test_the_rules_name_why_a_qdq_unit_stays_on_the_cpu() -> None:
    rng = np.random.default_rng(0)
    model = build(
        REFUSED,
        xs=np.array(0.05, np.float32), xz=np.array(-3, np.int8), ss=np.array(1 / 256, np.float32),
        tq=rng.integers(-127, 128, (4, 4, 2, 2)).astype(np.int8), ts=np.full(4, 0.01, np.float32),
        tz=np.zeros(4, np.int8),
        wq=rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8), ws=np.full(4, 0.01, np.float32),
        wz=np.zeros(4, np.int8),
    )
    found = {x.op: x.reason for x in xnnpack.partition(model).left}
    assert "switched off" in found["AveragePool"]
    assert "per-tensor weights only" in found["ConvTranspose"]
    assert "uint8 with output scale 1/256" in found["Softmax"]
    assert "unknown C / H / W" in found["Conv"]
    assert xnnpack.partition(model).taken == 0


FLOAT_RULES = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4, 8, 8] x, float[1, 16] v) => (float[1, 4, 16, 16] r, float[1, 4, 4, 4] p, float[1, 4] m,
                                           float[1, 4, 16, 16] rl, float[1, 4] ok) {
  r = Resize<mode = "nearest">(x, , sc)
  rl = Resize<mode = "linear">(x, , sc)
  p = MaxPool<kernel_shape = [2, 2], strides = [2, 2], ceil_mode = 1>(x)
  m = Gemm<alpha = 2.0, transB = 1>(v, w)
  ok = Gemm<transB = 1>(v, w)
}"""


def test_float_rules_name_the_attributes_xnnpack_refuses() -> None:
    model = build(FLOAT_RULES, sc=np.array([1, 1, 2, 2], np.float32), w=(4, 16))
    found = xnnpack.partition(model)
    reasons = {x.node: x.reason for x in found.left}
    assert len(found.left) == 3 and found.taken == 2, found.left
    assert any("mode nearest" in r for r in reasons.values())
    assert any("ceil_mode 1" in r for r in reasons.values())
    assert any("alpha or beta" in r for r in reasons.values())
