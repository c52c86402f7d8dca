"""complete-carried-qdq: a QAT export's QDQ graph is completed exactly, and onnxruntime fuses every group."""

from __future__ import annotations

import numpy as np

from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.passes.quantization import CompleteCarriedQDQ, LegalizeQDQ
from onnxq.targets import get_target
from tests.passes.quantization.qdq_helpers import build, full_check, optimized_ops, run

# What torch.onnx.export writes for an eager-mode QAT ConvBnReLU2d + MaxPool + Flatten + Linear:
# weights quantized at run time (Q of a float constant), the ConvBn fold left as Div / Mul / Add
# after the Conv, no Q/DQ after MaxPool and Flatten, float biases.
QAT = """<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 2, 8, 8] x) => (float[1, 5] y) {
  xq = QuantizeLinear(x, xs, xz)
  xd = DequantizeLinear(xq, xs, xz)
  wq = QuantizeLinear<axis = 0>(w, ws, wz)
  wd = DequantizeLinear<axis = 0>(wq, ws, wz)
  c = Conv<pads = [1, 1, 1, 1]>(xd, wd)
  d = Div(c, f)
  m = Mul(d, g)
  b = Add(m, beta)
  r = Relu(b)
  rq = QuantizeLinear(r, rs, rz)
  rd = DequantizeLinear(rq, rs, rz)
  p = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(rd)
  fl = Flatten(p)
  lq = QuantizeLinear<axis = 0>(lw, ls, lz)
  ld = DequantizeLinear<axis = 0>(lq, ls, lz)
  o = Gemm<transB = 1>(fl, ld, lb)
  oq = QuantizeLinear(o, os, oz)
  y = DequantizeLinear(oq, os, oz)
}"""


def _scales(w: np.ndarray) -> np.ndarray:
    return (np.abs(w).reshape(len(w), -1).max(axis=1) / 127).astype(np.float32)


def _qat(factor: np.ndarray, weight: np.ndarray | None = None, scales: np.ndarray | None = None) -> object:
    rng = np.random.default_rng(0)
    w = weight if weight is not None else rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    ws = scales if scales is not None else _scales(w)
    lw = rng.standard_normal((5, 64)).astype(np.float32) * 0.1
    return build(
        QAT,
        xs=np.array(0.02, np.float32), xz=np.array(128, np.uint8),
        w=w, ws=ws, wz=np.zeros(4, np.int8),
        f=factor.reshape(1, 4, 1, 1).astype(np.float32), g=np.array([1.1, 0.9, 1.0, 1.2], np.float32).reshape(4, 1, 1),
        beta=np.array([0.1, -0.2, 0.05, 0.0], np.float32).reshape(1, 4, 1, 1),
        rs=np.array(0.03, np.float32), rz=np.array(0, np.uint8),
        lw=lw, ls=(np.abs(lw).max(axis=1) / 127).astype(np.float32), lz=np.zeros(5, np.int8),
        lb=rng.standard_normal(5).astype(np.float32),
        os=np.array(0.05, np.float32), oz=np.array(128, np.uint8),
    )


def _complete(model: object) -> dict[str, int]:
    return dict(apply(model, Pipeline([CompleteCarriedQDQ()]), PassContext.with_resources([])).stats)


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": (rng.random((1, 2, 8, 8)) * 4).astype(np.float32)} for _ in range(4)]


def test_a_qat_export_is_completed_with_the_same_values_and_fuses_entirely() -> None:
    model = _qat(np.array([0.8, 1.3, -0.7, 2.0]))  # NOTE: one channel's factor is negative
    before = [run(model, f, optimize=False)[0] for f in _feeds()]
    ops = optimized_ops(model)
    assert ops["Conv"] + ops.get("FusedConv", 0) == 1 and ops["Gemm"] == 1, ops  # carried: float conv and gemm
    stats = _complete(model)
    assert stats == {"complete-carried-qdq.weights_folded": 2, "complete-carried-qdq.conv_factors_folded": 1,
                     "complete-carried-qdq.qdq_propagated": 2, "complete-carried-qdq.biases_quantized": 2}, stats
    full_check(model)
    assert not any(n.op_type in ("Div", "Mul", "Add") for n in model.graph)
    after = [run(model, f, optimize=False)[0] for f in _feeds()]
    for b, a in zip(before, after, strict=True):
        # NOTE: the same real weights (scale x factor rounded to float32) and int32 biases: at most
        # one output step apart where a value sits on a rounding boundary
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 0.05 + 1e-6, np.max(np.abs(a - b))
    ops = optimized_ops(model)
    assert ops["QLinearConv"] == 1 and ops["QGemm"] == 1 and not ops.get("Conv") and not ops.get("Gemm"), ops
    # NOTE: with its full-range QAT weights moved to uint8 where AVX2 would saturate them (legalize-qdq),
    # onnxruntime's integer kernels compute what the QDQ arithmetic says, on every CPU kind
    legal = apply(model, Pipeline([LegalizeQDQ()]), PassContext.with_resources([get_target("ort-cpu", cpu="avx2")]))
    assert legal.stats == {"legalize-qdq.full_range_weights_to_uint8": 2}, legal.stats
    fused = [run(model, f)[0] for f in _feeds()]
    assert all(np.max(np.abs(a - b)) <= 0.05 + 1e-6 for a, b in zip(after, fused, strict=True))


def test_a_negative_factor_on_a_channel_holding_the_type_minimum_is_left_unfolded() -> None:
    w = np.random.default_rng(2).standard_normal((4, 2, 3, 3)).astype(np.float32)
    scales = _scales(w)
    w[2, 0, 0, 0] = -128 * scales[2]  # NOTE: channel 2 holds -128, whose negation int8 cannot hold
    model = _qat(np.array([0.8, 1.3, -0.7, 2.0]), weight=w, scales=scales)
    before = [run(model, f, optimize=False)[0] for f in _feeds()]
    stats = _complete(model)
    assert "complete-carried-qdq.conv_factors_folded" not in stats, stats
    assert stats["complete-carried-qdq.weights_folded"] == 2
    assert sum(n.op_type == "Div" for n in model.graph) == 1
    after = [run(model, f, optimize=False)[0] for f in _feeds()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_uniform_factors_keep_a_per_tensor_weight_per_tensor_below_opset_13() -> None:
    # NOTE: opset 12 has no DequantizeLinear axis: per-channel factors are left in the graph there,
    # uniform ones fold into the one scale
    text = QAT.replace('"" : 13', '"" : 12').replace("<axis = 0>", "")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    lw = rng.standard_normal((5, 64)).astype(np.float32) * 0.1

    def model(f: np.ndarray) -> object:
        return build(
            text,
            xs=np.array(0.02, np.float32), xz=np.array(128, np.uint8),
            w=w, ws=np.array(np.abs(w).max() / 127, np.float32), wz=np.array(0, np.int8),
            f=f.reshape(1, 4, 1, 1).astype(np.float32), g=np.ones((4, 1, 1), np.float32),
            beta=np.zeros((1, 4, 1, 1), np.float32),
            rs=np.array(0.03, np.float32), rz=np.array(0, np.uint8),
            lw=lw, ls=np.array(np.abs(lw).max() / 127, np.float32), lz=np.array(0, np.int8),
            lb=np.zeros(5, np.float32), os=np.array(0.05, np.float32), oz=np.array(128, np.uint8),
        )

    per_channel = model(np.array([0.8, 1.3, 0.7, 2.0]))
    assert "complete-carried-qdq.conv_factors_folded" not in _complete(per_channel)
    uniform = model(np.full(4, 0.5))
    before = [run(uniform, f, optimize=False)[0] for f in _feeds()]
    assert _complete(uniform)["complete-carried-qdq.conv_factors_folded"] == 1
    full_check(uniform)
    dq = next(n for n in uniform.graph if n.op_type == "Conv").inputs[1].producer()
    assert dq.inputs[1].const_value.shape == () and "axis" not in dq.attributes
    after = [run(uniform, f, optimize=False)[0] for f in _feeds()]
    assert all(np.max(np.abs(a - b)) <= 0.05 + 1e-6 for a, b in zip(before, after, strict=True))
