"""legalize-qdq: a carried int8 QDQ graph moves its activations to uint8, exactly, and onnxruntime fuses it."""

from __future__ import annotations

import numpy as np

from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.passes.quantization import LegalizeQDQ
from onnxq.targets import get_target
from tests.passes.quantization.qdq_helpers import HOST, build, full_check, optimized_ops, run

VNNI = get_target("ort-cpu", cpu="vnni")

# What onnxruntime's quantize_static writes with activation_type=QInt8: int8 activations with
# their own zero points, int8 per-channel weights, an int8 constant operand of an Add.
CARRIED = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  wd = DequantizeLinear<axis = 0>(wq, ws, wz)
  c = Conv<pads = [1, 1, 1, 1]>(xd, wd)
  cq = QuantizeLinear(c, cs, cz)
  cd = DequantizeLinear(cq, cs, cz)
  kd = DequantizeLinear(kq, ks, kz)
  a = Add(cd, kd)
  aq = QuantizeLinear(a, as, az)
  y = DequantizeLinear(aq, as, az)
}"""


def _carried() -> object:
    rng = np.random.default_rng(0)
    return build(
        CARRIED,
        xs=np.array(0.02, np.float32), xz=np.array(-10, np.int8),
        wq=rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), ws=np.full(4, 0.002, np.float32),
        wz=np.zeros(4, np.int8),
        cs=np.array(0.05, np.float32), cz=np.array(3, np.int8),
        kq=rng.integers(-128, 128, (1, 4, 1, 1)).astype(np.int8), ks=np.array(0.01, np.float32),
        kz=np.array(-5, np.int8),
        **{"as": np.array(0.06, np.float32)}, az=np.array(0, np.int8),
    )


def _legalize(model: object, target: object) -> dict[str, int]:
    return dict(apply(model, Pipeline([LegalizeQDQ()]), PassContext.with_resources([target])).stats)


def test_int8_activations_become_uint8_with_the_same_values() -> None:
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32) * s} for s in (0.5, 1.0, 3.0)]
    model = _carried()
    before = [run(model, f, optimize=False)[0] for f in feeds]
    # int8 activations on x86: the Add stays float between a DequantizeLinear and a QuantizeLinear
    ops = optimized_ops(model)
    assert ops["QLinearConv"] == 1 and not ops.get("QLinearAdd") and ops["DequantizeLinear"] == 3, ops
    # NOTE: full-range weights stay int8 where the CPU does not saturate them (VNNI, arm64); on AVX2
    # they move to uint8 too (test_complete_carried_qdq)
    stats = _legalize(model, VNNI)
    assert stats == {"legalize-qdq.activations_to_uint8": 3, "legalize-qdq.constants_to_uint8": 1}
    full_check(model)
    zero_points = {n.outputs[0].name: n.inputs[2].const_value for n in model.graph if n.op_type == "QuantizeLinear"}
    assert {k: (v.dtype.name, int(v.numpy())) for k, v in zero_points.items()} == {
        "xq": ("UINT8", 118), "cq": ("UINT8", 131), "aq": ("UINT8", 128)}
    weight = next(n for n in model.graph if n.outputs[0].name == "wd")
    assert weight.inputs[0].const_value.dtype.name == "INT8"  # u8s8: weights stay int8
    constant = next(n for n in model.graph if n.outputs[0].name == "kd")
    assert constant.inputs[0].const_value.dtype.name == "UINT8"
    after = [run(model, f, optimize=False)[0] for f in feeds]
    for want, got in zip(before, after, strict=True):
        np.testing.assert_array_equal(got, want)  # the same real values, bit for bit
    ops = optimized_ops(model)
    assert ops["QLinearConv"] == 1 and ops["QLinearAdd"] == 1 and ops["DequantizeLinear"] == 1, ops
    assert not _legalize(model, VNNI)  # idempotent


def test_targets_with_int8_activations_keep_them() -> None:
    model = _carried()
    assert not _legalize(model, get_target("tensorrt"))
    assert all(n.inputs[2].const_value.dtype.name == "INT8" for n in model.graph if n.op_type == "QuantizeLinear")


def test_quantize_legalizes_a_carried_graph_and_keeps_its_scales() -> None:
    import onnxq

    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    model, report = onnxq.quantize(_carried(), feeds, target=HOST)
    assert report.stats["legalize-qdq.activations_to_uint8"] == 3
    scales = {n.outputs[0].name: float(n.inputs[1].const_value.numpy()) for n in model.graph
              if n.op_type == "QuantizeLinear"}
    assert scales == {"xq": np.float32(0.02), "cq": np.float32(0.05), "aq": np.float32(0.06)}
    assert any("int8 activations move to uint8" in d.message for d in report.diagnostics)
