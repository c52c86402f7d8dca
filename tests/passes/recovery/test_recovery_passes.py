"""Accuracy-recovery passes on constructed cases where each is known to help, against numpy references.

Each case checks (a) the float function is unchanged (onnxruntime, tight tolerance), (b) the new
initializers equal the paper's formula computed in numpy, and (c) the INT8 result of the plain
pipeline gets closer to FP32 with the pass than without it, on this machine's CPU kind.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from onnxq.calibration.data import CalibrationData
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.framework.registry import PassRegistry
from onnxq.passes.recovery import AdaRound, CorrectBias, CrossLayerEqualization, SmoothQuant
from onnxq.passes.recovery.adaround import adaround_rows
from onnxq.passes.recovery.smooth_quant import smoothing_scales
from tests.passes.quantization.qdq_helpers import HOST, quantize
from tests.quantization import _fragile


def _model(text: str, **weights: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in weights.items())
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _run(model: ir.Model, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _apply(model: ir.Model, pass_, feeds) -> dict[str, int]:
    ctx = PassContext.with_resources([HOST, CalibrationData.from_source(feeds)])
    return dict(apply(model, Pipeline([pass_]), ctx).stats)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


CONV_CHAIN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 12, 12] x) => (float[1, 4, 12, 12] y) {
  a = Conv<pads=[1, 1, 1, 1]>(x, w1, b1)
  r = Relu(a)
  y = Conv(r, w2, b2)
}"""


def _conv_chain_weights() -> dict[str, np.ndarray]:
    # BatchNorm folding leaves output channels of very different ranges: 100x apart here.
    rng = np.random.default_rng(0)
    gain = np.geomspace(0.05, 5.0, 8).astype(np.float32)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3 * gain[:, None, None, None]).astype(np.float32)
    return {"w1": w1, "b1": (0.1 * gain).astype(np.float32),
            "w2": (rng.standard_normal((4, 8, 1, 1)) / gain[None, :, None, None] * 0.3).astype(np.float32),
            "b2": np.zeros(4, np.float32)}


def test_cross_layer_equalization_matches_the_paper_and_helps_per_tensor_weights() -> None:
    weights = _conv_chain_weights()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    model = _model(CONV_CHAIN, **weights)
    want = _run(model, feeds)
    stats = _apply(model, CrossLayerEqualization(iterations=1), feeds)
    assert stats["cross-layer-equalization.pairs_equalized"] == 1
    r1 = np.abs(weights["w1"]).max(axis=(1, 2, 3))
    r2 = np.abs(weights["w2"]).max(axis=(0, 2, 3))
    s = np.sqrt(r1 / r2)
    got = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    np.testing.assert_allclose(got["w1"], weights["w1"] / s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(got["b1"], weights["b1"] / s, rtol=1e-6)
    np.testing.assert_allclose(got["w2"], weights["w2"] * s[None, :, None, None], rtol=1e-6)
    ranges = np.abs(got["w1"]).max(axis=(1, 2, 3))
    assert ranges.max() / ranges.min() < 0.05 * (r1.max() / r1.min())
    np.testing.assert_allclose(_run(model, feeds), want, rtol=1e-4, atol=1e-5)
    # INT8 with per-tensor weights: closer to FP32 after equalization
    plain = _model(CONV_CHAIN, **weights)
    quantize(plain, feeds, per_channel=False)
    quantize(model, feeds, per_channel=False)
    assert _sqnr(want, _run(model, feeds)) > _sqnr(want, _run(plain, feeds)) + 6  # at least 4x less noise


def test_smooth_quant_migrates_the_outlier_channel() -> None:
    x = _fragile.samples(64)["x"]
    feeds = [{"x": row} for row in x]
    model = _fragile.model()
    want = _run(model, feeds)
    stats = _apply(model, SmoothQuant(alpha=0.5, max_samples=64), feeds)
    assert stats["smooth-quant.activations_smoothed"] >= 1
    # numpy reference of the 'spread' -> 'branch' site: h = x @ wa, s from max|h_k| and max|wb_k|
    w = _fragile.weights()
    h = np.concatenate([row @ w["wa"] for row in x])
    s = smoothing_scales(np.abs(h).max(axis=0), np.abs(w["wb"]).max(axis=1), 0.5)
    got = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    np.testing.assert_allclose(got["wa"], w["wa"] / s[None, :], rtol=1e-5)
    np.testing.assert_allclose(got["wb"], w["wb"] * s[:, None], rtol=1e-5)
    np.testing.assert_allclose(_run(model, feeds), want, rtol=1e-3, atol=1e-3)


def test_smooth_quant_searched_alpha_recovers_int8_accuracy() -> None:
    calib = [{"x": row} for row in _fragile.samples(64)["x"]]
    held = [{"x": row} for row in _fragile.samples(200, seed=9)["x"]]
    want = _run(_fragile.model(), held).argmax(-1)
    plain = _fragile.model()
    quantize(plain, calib)
    smoothed = _fragile.model()
    stats = _apply(smoothed, SmoothQuant(), calib)
    assert 30 <= stats["smooth-quant.mean_alpha_x100"] <= 80
    quantize(smoothed, calib)
    before = float(np.mean(_run(plain, held).argmax(-1) == want))
    after = float(np.mean(_run(smoothed, held).argmax(-1) == want))
    assert before < 0.5 and after >= 0.95, (before, after)


GEMM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 16] x) => (float[1, 8] y) {
  r = Relu(x)
  y = Gemm(r, w, b)
}"""


def test_correct_bias_cancels_the_mean_error_of_rounded_weights() -> None:
    # Per-tensor weights whose scale is set by one large entry: the others sit at 0.4 of a step and
    # round to zero, a biased error that a positive (post-Relu) input turns into an output offset.
    step = 1.0 / 64  # the largest weight is 127 steps (64 on AVX2: 7-bit weights) of its scale
    qlim = 64 if HOST.reduce_range else 127
    w = np.full((16, 8), 0.4 * step * 64 / qlim, np.float32)
    w[0, 0] = 64 * step
    weights = {"w": w, "b": np.zeros(8, np.float32)}
    rng = np.random.default_rng(2)
    feeds = [{"x": np.abs(rng.standard_normal((1, 16))).astype(np.float32) + 0.5} for _ in range(64)]
    model = _model(GEMM, **weights)
    want = _run(model, feeds)
    stats = _apply(model, CorrectBias(per_channel=False, max_samples=64), feeds)
    assert stats["correct-bias.biases_corrected"] == 1
    mean_x = np.maximum(np.concatenate([f["x"] for f in feeds]), 0).mean(axis=0)
    scale = np.abs(w).max() / qlim
    w_deq = np.clip(np.round(w / scale), -qlim, qlim) * scale
    expected = -(mean_x @ (w_deq - w))
    np.testing.assert_allclose(model.graph.initializers["b"].const_value.numpy(), expected, rtol=1e-4, atol=1e-6)
    plain = _model(GEMM, **weights)
    quantize(plain, feeds, per_channel=False)
    quantize(model, feeds, per_channel=False)
    offset_before = np.abs((_run(plain, feeds) - want).mean(axis=0)).max()
    offset_after = np.abs((_run(model, feeds) - want).mean(axis=0)).max()
    assert offset_after < 0.2 * offset_before, (offset_before, offset_after)


def test_recovery_passes_are_registered_with_their_options() -> None:
    registry = PassRegistry.default()
    pipeline = registry.parse("cross-layer-equalization{iterations=2},smooth-quant{alpha=0.5},correct-bias")
    assert str(pipeline) == "cross-layer-equalization{iterations=2},smooth-quant{alpha=0.5},correct-bias"


def test_recovery_passes_are_idempotent() -> None:
    feeds = [{"x": row} for row in _fragile.samples(32)["x"]]
    for pass_ in (CrossLayerEqualization(), SmoothQuant(), CorrectBias(), AdaRound(iterations=50)):
        model = _fragile.model()
        _apply(model, pass_, feeds)
        again = apply(model, Pipeline([pass_]), PassContext.with_resources([HOST, CalibrationData.from_source(feeds)]))
        assert not again.modified, pass_.name


def _correlated(rng: np.random.Generator, rows: int, k: int, mix: np.ndarray) -> np.ndarray:
    return (rng.standard_normal((rows, k)) @ mix).astype(np.float32)


def test_adaround_rows_beats_nearest_rounding_on_unseen_inputs() -> None:
    # Correlated inputs: rounding errors of neighbouring weights add up in the output unless
    # chosen together, which nearest rounding cannot do.
    rng = np.random.default_rng(3)
    k, c, qlim = 48, 16, 64
    mix = rng.standard_normal((k, k)) * 0.4 + np.eye(k)
    w = (rng.standard_normal((c, k)) * 0.1).astype(np.float32)
    scale = np.abs(w).max(axis=1) / qlim
    x = _correlated(rng, 4096, k, mix)
    ints, before, after = adaround_rows(w, scale, x.T.astype(np.float64) @ x / len(x), qlim, iterations=300)
    assert after < 0.7 * before
    assert np.all(ints == np.round(ints)) and np.abs(ints).max() <= qlim
    # the largest weight of each channel keeps its rounding (so the scale does not change), and
    # every weight moves at most one step from its float value
    top = np.abs(w).argmax(axis=1)
    np.testing.assert_array_equal(ints[np.arange(c), top], np.round(w[np.arange(c), top] / scale))
    assert np.all(np.abs(ints - w / scale[:, None]) < 1.0)
    # numpy reference on inputs the Gram matrix never saw
    test = _correlated(rng, 4096, k, mix)
    nearest = np.clip(np.round(w / scale[:, None]), -qlim, qlim)
    err_nearest = np.mean((test @ (nearest * scale[:, None] - w).T) ** 2)
    err_ada = np.mean((test @ (ints * scale[:, None] - w).T) ** 2)
    assert err_ada < 0.7 * err_nearest, (err_nearest, err_ada)
    # past its deadline, a layer keeps nearest rounding
    late, b, a = adaround_rows(w, scale, x.T.astype(np.float64) @ x / len(x), qlim, deadline=0.0)
    np.testing.assert_array_equal(late, nearest)
    assert a == b


CONV = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 6, 10, 10] x) => (float[1, 8, 5, 5] y) {
  y = Conv<pads=[1, 1, 1, 1], strides=[2, 2]>(x, w, b)
}"""


def test_adaround_rounds_conv_weights_onto_the_quantizer_grid_and_lowers_the_output_error() -> None:
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((6, 6)) * 0.5 + np.eye(6)
    weights = {"w": (rng.standard_normal((8, 6, 3, 3)) * 0.2).astype(np.float32),
               "b": np.zeros(8, np.float32)}

    def feeds(seed: int, n: int) -> list[dict[str, np.ndarray]]:
        r = np.random.default_rng(seed)
        return [{"x": np.einsum("ij,bjhw->bihw", mix, r.standard_normal((1, 6, 10, 10))).astype(np.float32)}
                for _ in range(n)]

    calib, held = feeds(5, 32), feeds(6, 32)
    model = _model(CONV, **weights)
    want = _run(model, held)
    stats = _apply(model, AdaRound(), calib)
    assert stats["adaround.layers_rounded"] == 1 and stats["adaround.mean_error_vs_nearest_pct"] < 80
    qlim = 64 if HOST.reduce_range else 127
    scale = np.abs(weights["w"]).max(axis=(1, 2, 3)) / qlim
    got = model.graph.initializers["w"].const_value.numpy()
    steps = got / scale[:, None, None, None]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on quantize-weights' grid
    assert np.all(np.abs(steps - weights["w"] / scale[:, None, None, None]) < 1.0)
    nearest = _model(CONV, **{**weights, "w": np.round(weights["w"] / scale[:, None, None, None]).astype(
        np.float32) * scale[:, None, None, None]})
    assert _sqnr(want, _run(model, held)) > _sqnr(want, _run(nearest, held)) + 1.5
    # the INT8 pipeline writes exactly these weights: its weight DequantizeLinear reproduces them
    quantized = _model(CONV, **weights)
    _apply(quantized, AdaRound(), calib)
    quantize(quantized, calib)
    ints = {v.name: v.const_value.numpy() for v in quantized.graph.initializers.values()
            if v.const_value is not None and v.const_value.dtype == ir.DataType.INT8}
    assert any(np.array_equal(q.astype(np.float32), np.round(steps)) for q in ints.values())
