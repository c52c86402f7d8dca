"""quantize-weights-int4: 4-bit blocks along K (MatMulNBits), checked against the float weights they replace."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxq
from onnxq.cli import main
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.passes.quantization import QuantizeWeightsInt4
from onnxq.runtime import session
from tests.passes.quantization.qdq_helpers import build

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402

K, N, BLOCK = 128, 48, 32
ONE_MATMUL = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[M, {K}] x) => (float[M, {N}] y) {{
  y = MatMul(x, w)
}}"""


def _dequantized(algo: str, **options: object) -> tuple[np.ndarray, np.ndarray, ir.Model]:
    """The float weight and what the 4-bit model multiplies by (fed the identity, it returns W)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    w[:, 3] *= 20  # NOTE: one output column with a wider range
    model = build(ONE_MATMUL, w=w)
    result = apply(model, Pipeline([QuantizeWeightsInt4(algo=algo, block_size=BLOCK, **options)]),
                   PassContext.with_resources([]))
    assert result.stats["quantize-weights-int4.matmuls_int4"] == 1
    assert [n.op_type for n in model.graph] == ["MatMulNBits"]
    return w, session(model).run(None, {"x": np.eye(K, dtype=np.float32)})[0], model


def _rtn_reference(w: np.ndarray) -> np.ndarray:
    """Symmetric 4-bit round to nearest per block along K: the signed largest-magnitude weight maps to
    -8 (so the range is [-8, 7] steps of ``m / -8``), the rest rounded half to even and clipped."""
    out = np.zeros_like(w)
    for col in range(w.shape[1]):
        for start in range(0, w.shape[0], BLOCK):
            block = w[start:start + BLOCK, col]
            scale = np.float32(block[np.argmax(np.abs(block))] / -8)
            out[start:start + BLOCK, col] = np.clip(np.rint(block / scale), -8, 7) * scale
    return out


def test_rtn_matches_a_numpy_reference_of_4_bit_blocks() -> None:
    w, got, _ = _dequantized("rtn")
    np.testing.assert_allclose(got, _rtn_reference(w), rtol=0, atol=np.abs(w).max() * 1e-6)
    assert max(len(np.unique(got[s:s + BLOCK, c])) for c in range(N) for s in range(0, K, BLOCK)) <= 16


def test_hqq_matches_onnxruntimes_and_beats_asymmetric_rtn() -> None:
    """Ours (numpy, one weight at a time) against onnxruntime's torch HQQ on the same weight: the same
    weight to float precision; 16 levels per block; below asymmetric RTN's error (its starting point)."""
    from onnxq.passes.quantization.quantize_weights_int4 import _onnxruntime_hqq

    pytest.importorskip("torch", reason="onnxruntime's HQQ, the reference, runs on torch")
    w, rtn, _ = _dequantized("rtn", symmetric=False)
    _, hqq, _ = _dequantized("hqq")
    reference = build(ONE_MATMUL, w=w)
    _onnxruntime_hqq(reference, [next(iter(reference.graph)).name or "MatMul_int4_0"],
                     QuantizeWeightsInt4.Options(algo="hqq", block_size=BLOCK))
    theirs = session(reference).run(None, {"x": np.eye(K, dtype=np.float32)})[0]
    np.testing.assert_allclose(hqq, theirs, rtol=1e-3, atol=1e-4)  # float32 sums in another order
    assert np.mean((hqq - w) ** 2) < np.mean((rtn - w) ** 2)
    for col in range(N):
        for start in range(0, K, BLOCK):
            assert len(np.unique(hqq[start:start + BLOCK, col])) <= 16
    assert np.mean((hqq - w) ** 2) <= np.mean((rtn - w) ** 2) * 1.1


def test_weight_only_cli_keeps_the_transformer_within_a_point(tmp_path: Path) -> None:
    zoo.ensure_built(["transformer_digits"])
    out = tmp_path / "int4.onnx"
    code = main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(out), "--mode", "weight-only",
                 "--calib", str(zoo.zoo_dir() / "transformer_digits.calib.npz"), "-q"])
    assert code == 0
    graph = onnxq.load_model(out).graph
    # NOTE: every weight went to 4 bits (the Gemm the optimize preset made too); attention's
    # activation x activation MatMuls stay float
    assert sum(n.op_type == "MatMulNBits" for n in graph) >= 10
    assert not [n.name for n in graph if n.op_type in ("MatMul", "Gemm") and n.inputs[1].const_value is not None]
    base, quant = zoo.evaluate("transformer_digits"), zoo.evaluate("transformer_digits", out)
    assert quant >= base - 0.01, (base, quant)


def test_weight_only_is_refused_where_neither_form_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo.ensure_built(["transformer_digits"])
    code = main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(tmp_path / "q.onnx"),
                 "--mode", "weight-only", "--target", "qnn"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MatMulNBits" in err[0] and "qnn" in err[0], err


@pytest.mark.parametrize("symmetric", [True, False])
def test_qdq_form_gives_the_values_of_matmulnbits_in_standard_onnx(symmetric: bool) -> None:
    """``format="qdq"``: blocked DequantizeLinear (opset 21) before each MatMul, int4 codes without a
    zero point when symmetric (TensorRT's weight-only INT4), uint4 with zero points otherwise; the
    outputs equal MatMulNBits' exactly (same codes, same scales), 8-bit ends included."""
    text = CHAIN.replace('"" : 17', '"" : 21')
    rng = np.random.default_rng(7)
    weights = {f"w{i}": (rng.standard_normal((K, K)) / 8).astype(np.float32) for i in (1, 2, 3)}
    x = rng.standard_normal((3, K)).astype(np.float32)
    outs = {}
    for form in ("nbits", "qdq"):
        model = build(text, **weights)
        result = apply(model, Pipeline([QuantizeWeightsInt4(block_size=BLOCK, format=form, symmetric=symmetric,
                                                            eight_bit=("ends",), accuracy_level=1)]),
                       PassContext.with_resources([]))
        onnx.checker.check_model(ir.to_proto(model), full_check=True)
        outs[form] = session(model).run(None, {"x": x})[0]
    assert result.stats["quantize-weights-int4.matmuls_int4"] == 1 and result.stats["quantize-weights-int4.matmuls_int8"] == 2
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert [n.inputs[0].dtype for n in dqs] == (
        [ir.DataType.INT8, ir.DataType.INT4, ir.DataType.INT8] if symmetric else
        [ir.DataType.UINT8, ir.DataType.UINT4, ir.DataType.UINT8])
    assert all(len(n.inputs) == (2 if symmetric else 3) and n.attributes.get_int("block_size") == BLOCK for n in dqs)
    np.testing.assert_array_equal(outs["qdq"], outs["nbits"])
    with pytest.raises(onnxq.errors.OptionError, match="opset 21"):
        apply(build(CHAIN, **weights), Pipeline([QuantizeWeightsInt4(format="qdq")]), PassContext.with_resources([]))


def test_weight_only_for_tensorrt_writes_the_qdq_form(tmp_path: Path) -> None:
    zoo.ensure_built(["transformer_digits"])
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(out), "--mode", "weight-only",
                 "--target", "tensorrt", "-q"]) == 0
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert not any(n.op_type == "MatMulNBits" for n in proto.graph.node)
    assert any(t.data_type == onnx.TensorProto.INT4 for t in proto.graph.initializer)


# --- calibrated algorithms (GPTQ, AWQ): own numpy code, checked against textbook references ---


def _correlated_inputs(rows: int, seed: int = 1) -> np.ndarray:
    """Activations with channel scales 100x apart and correlated channels (what GPTQ and AWQ use);
    ``seed`` draws other rows of the same distribution."""
    structure = np.random.default_rng(1)
    mix = structure.standard_normal((K, K)).astype(np.float32) * 0.3 + np.eye(K, dtype=np.float32)
    scales = np.exp(structure.standard_normal(K))
    rows_rng = np.random.default_rng(seed + 100)
    return ((rows_rng.standard_normal((rows, K)) * scales) @ mix).astype(np.float32)


def _weight() -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    w[:, 3] *= 20
    return w


def _calibrated_model(algo: str, x: np.ndarray, **options: object) -> ir.Model:
    from onnxq.calibration.data import CalibrationData

    model = build(ONE_MATMUL, w=_weight())
    apply(model, Pipeline([QuantizeWeightsInt4(algo=algo, block_size=BLOCK, accuracy_level=1, **options)]),
          PassContext.with_resources([CalibrationData.from_source({"x": x.reshape(8, -1, K)})]))
    return model


def _obs_reference(w: np.ndarray, h: np.ndarray, symmetric: bool) -> np.ndarray:
    """GPTQ's result computed the textbook way (optimal brain surgeon, Frantar & Alistarh 2022): one
    input row at a time, its rounding error spread over the later rows through the explicit inverse
    Hessian, which then loses that row and column; no Cholesky factor, no lazy blocks. Block
    parameters come from the weight as updated when the block starts."""
    from onnxq.passes.quantization import _int4

    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    h[np.diag_indices_from(h)] += 0.01 * np.mean(np.diag(h))
    inv = np.linalg.inv(h)
    out = np.zeros_like(w)
    for i in range(K):
        if i % BLOCK == 0:
            scale, zero = _int4.block_params(w[i:i + BLOCK], symmetric)
        q = (_int4.to_codes(w[i], scale, zero).astype(np.float64) - zero) * scale
        out[i] = q
        err = (w[i] - q) / inv[i, i]
        w[i + 1:] -= np.outer(inv[i + 1:, i], err)
        inv -= np.outer(inv[:, i], inv[i, :]) / inv[i, i]
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_matches_the_textbook_obs_reference_and_beats_rtn(symmetric: bool) -> None:
    x = _correlated_inputs(1024)
    h = x.astype(np.float64).T @ x
    model = _calibrated_model("gptq", x, symmetric=symmetric)
    got = session(model).run(None, {"x": np.eye(K, dtype=np.float32)})[0]
    expected = _obs_reference(_weight(), h, symmetric)
    # NOTE: float rounding of two algebraically equal updates flips a rare code at a half step
    assert np.mean(np.isclose(got, expected, rtol=1e-4, atol=1e-5)) > 0.99
    w = _weight()
    held = _correlated_inputs(512, seed=2)
    _, rtn_w, _ = _dequantized("rtn", symmetric=symmetric)
    err_gptq = np.sum((held @ (got - w)) ** 2)
    err_rtn = np.sum((held @ (rtn_w - w)) ** 2)
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)


def test_gptq_act_order_keeps_contiguous_blocks_and_still_beats_rtn() -> None:
    x = _correlated_inputs(1024)
    model = _calibrated_model("gptq", x, act_order=True)
    got = session(model).run(None, {"x": np.eye(K, dtype=np.float32)})[0]
    for col in range(N):
        for start in range(0, K, BLOCK):
            assert len(np.unique(got[start:start + BLOCK, col])) <= 16
    held = _correlated_inputs(512, seed=2)
    _, rtn_w, _ = _dequantized("rtn")
    assert np.sum((held @ (got - _weight())) ** 2) < 0.5 * np.sum((held @ (rtn_w - _weight())) ** 2)


def test_awq_matches_a_search_on_stored_activations() -> None:
    """AWQ's scale and clip searches score ``tr(dW^T H dW)``; the reference keeps the activations and
    measures ``||X W - X W_q||`` directly, over the same grids."""
    from onnxq.passes.quantization import _int4

    x = _correlated_inputs(1024)
    w = _weight()
    best = (np.inf, None)
    mean_abs = np.maximum(np.abs(x).mean(axis=0), 1e-8)
    for step in range(_int4.AWQ_GRID):
        s = mean_abs ** (step / _int4.AWQ_GRID)
        s = s / np.sqrt(s.max() * s.min())
        dq = _int4.rtn(w * s[:, None], BLOCK).dequantize(K) / s[:, None]
        err = np.sum((x.astype(np.float64) @ (w - dq)) ** 2)
        if err < best[0]:
            best = (err, s)
    s = best[1]
    scaled, xs = w * s[:, None], x / s
    ratios = np.ones((K // BLOCK, N), np.float32)
    for b in range(K // BLOCK):
        rows = slice(b * BLOCK, (b + 1) * BLOCK)
        errs = []
        for ratio in _int4.CLIP_RATIOS:
            scale, zero = _int4.block_params(scaled[rows], True, ratio)
            dq = (_int4.to_codes(scaled[rows], scale, zero).astype(np.float32) - zero) * scale
            errs.append(np.sum((xs[:, rows].astype(np.float64) @ (scaled[rows] - dq)) ** 2, axis=0))
        ratios[b] = np.asarray(_int4.CLIP_RATIOS)[np.argmin(errs, axis=0)]
    expected = _int4.rtn(scaled, BLOCK, True, ratios).dequantize(K)
    model = _calibrated_model("awq", x)
    assert [n.op_type for n in model.graph] == ["Mul", "MatMulNBits"]  # NOTE: x is a graph input: no producer to fold into
    np.testing.assert_allclose(model.graph.node(0).inputs[1].const_value.numpy(), 1 / s, rtol=1e-5)
    got = session(model).run(None, {"x": np.diag(s).astype(np.float32)})[0]  # NOTE: undoes the Mul
    assert np.mean(np.isclose(got, expected, rtol=1e-4, atol=1e-5)) > 0.99
    held = _correlated_inputs(512, seed=2)
    _, rtn_w, _ = _dequantized("rtn")
    ours = session(model).run(None, {"x": held})[0]
    assert np.sum((ours - held @ w) ** 2) < np.sum((held @ (rtn_w - w)) ** 2)


def test_awq_folds_its_scale_into_a_layer_norm() -> None:
    """An activation made by LayerNormalization takes AWQ's inverse scale in its gamma and beta: no
    op is added and the float function is unchanged."""
    from onnxq.calibration.data import CalibrationData

    text = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[M, {K}] x) => (float[M, {N}] y) {{
  n = LayerNormalization<axis = -1>(x, gamma, beta)
  y = MatMul(n, w)
}}"""
    rng = np.random.default_rng(3)
    gamma = np.exp(rng.standard_normal(K)).astype(np.float32)
    beta = rng.standard_normal(K).astype(np.float32)
    model = build(text, w=_weight(), gamma=gamma, beta=beta)
    x = _correlated_inputs(512)
    reference = session(build(text, w=_weight(), gamma=gamma, beta=beta)).run(None, {"x": x})[0]
    result = apply(model, Pipeline([QuantizeWeightsInt4(algo="awq", block_size=BLOCK, accuracy_level=1)]),
                   PassContext.with_resources([CalibrationData.from_source({"x": x.reshape(8, -1, K)})]))
    assert [n.op_type for n in model.graph] == ["LayerNormalization", "MatMulNBits"]
    assert result.stats["quantize-weights-int4.awq_scales_folded"] == 1
    got = session(model).run(None, {"x": x})[0]
    assert 10 * np.log10(np.sum(reference ** 2) / np.sum((got - reference) ** 2)) > 20


def test_gptq_statistics_do_not_grow_with_the_number_of_samples(tmp_path: Path) -> None:
    """The Hessians are accumulated while streaming: 8x the samples, the same peak (tracemalloc sees
    numpy's buffers; a collector that kept the activations would grow by 7 x 64 KiB per input)."""
    import tracemalloc

    from onnxq.calibration.data import CalibrationData
    from onnxq.passes.quantization.quantize_weights_int4 import _input_statistics

    model = build(ONE_MATMUL, w=_weight())
    x = _correlated_inputs(64 * 128)
    for i in range(64):
        np.savez(tmp_path / f"{i:04d}.npz", x=x[i * 128:(i + 1) * 128])
    peaks = []
    for samples in (8, 64):
        data = CalibrationData.from_source(tmp_path)
        proto = ir.to_proto(model)
        tracemalloc.start()
        stats = _input_statistics(proto, model, ["x"], data, samples)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        h, _ = stats["x"]
        rows = x[:samples * 128].astype(np.float64)
        expected = rows.T @ rows
        assert np.linalg.norm(h - expected) < 1e-5 * np.linalg.norm(expected)
    assert peaks[1] < peaks[0] + 64 * 1024, peaks


def test_calibrated_algorithms_need_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo.ensure_built(["transformer_digits"])
    code = main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(tmp_path / "q.onnx"),
                 "--mode", "weight-only", "--algo", "gptq"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--calib" in err[0], err
    assert not (tmp_path / "q.onnx").exists()


CHAIN = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[M, {K}] x) => (float[M, {K}] y) {{
  a = MatMul(x, w1)
  b = MatMul(a, w2)
  y = MatMul(b, w3)
}}"""


def test_eight_bit_blocks_for_the_ends_and_four_bits_between() -> None:
    """``eight_bit=("ends",)``: the first and last MatMul (a model's input projection and LM head)
    get 8-bit blocks, the middle one 4-bit, each rounded to its own grid."""
    rng = np.random.default_rng(4)
    weights = {f"w{i}": (rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32) for i in (1, 2, 3)}
    model = build(CHAIN, **weights)
    result = apply(model, Pipeline([QuantizeWeightsInt4(block_size=BLOCK, eight_bit=("ends",))]),
                   PassContext.with_resources([]))
    bits = {n.name: n.attributes.get_int("bits", 0) for n in model.graph}
    assert sorted(bits.values()) == [4, 8, 8] and list(bits.values())[1] == 4, bits
    assert result.stats["quantize-weights-int4.matmuls_int8"] == 2
    eye = np.eye(K, dtype=np.float32)
    for node, (name, w) in zip(model.graph, weights.items(), strict=True):
        levels = 256 if bits[node.name] == 8 else 16
        error = np.abs(_nbits_weight(model, node, eye) - w).max() / np.abs(w).max()
        assert error < (2.0 / levels), (name, error)


def _nbits_weight(model: ir.Model, node: ir.Node, eye: np.ndarray) -> np.ndarray:
    """The weight one MatMulNBits node multiplies by (run alone on the identity)."""
    import onnx

    proto = ir.to_proto(model)
    keep = [n for n in proto.graph.node if n.name == node.name]
    inputs = set(keep[0].input)
    sub = onnx.helper.make_graph(
        keep, "one", [onnx.helper.make_tensor_value_info(keep[0].input[0], onnx.TensorProto.FLOAT, [K, K])],
        [onnx.helper.make_tensor_value_info(keep[0].output[0], onnx.TensorProto.FLOAT, [K, K])],
        [t for t in proto.graph.initializer if t.name in inputs])
    one = onnx.helper.make_model(sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    import onnxruntime as ort

    return ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {keep[0].input[0]: eye})[0]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_to_nearest_and_packing_are_onnxruntimes_byte_for_byte(bits: int, symmetric: bool) -> None:
    """Our round to nearest and MatMulNBits packing (which GPTQ and AWQ write too) against
    onnxruntime's ``MatMulNBitsQuantizer``."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from onnxq.passes.quantization import _int4

    model = build(ONE_MATMUL, w=_weight())
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=symmetric, accuracy_level=4,
                                                bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(ir.to_proto(model), bits=bits, block_size=BLOCK, is_symmetric=symmetric,
                                           accuracy_level=4, algo_config=config)
    quantizer.process()
    theirs = {t.name: onnx.numpy_helper.to_array(t) for t in quantizer.model.model.graph.initializer}
    packed, scales, zeros = _int4.pack(_int4.rtn(_weight(), BLOCK, symmetric, bits=bits))
    np.testing.assert_array_equal(theirs[f"w_Q{bits}"].reshape(packed.shape), packed)
    np.testing.assert_array_equal(theirs["w_scales"].reshape(-1), scales)
    if symmetric:
        assert zeros is None
    else:
        np.testing.assert_array_equal(theirs["w_zero_points"].reshape(-1), zeros)


@pytest.mark.parametrize("algo", ["gptq", "awq"])
def test_calibrated_algorithms_are_deterministic_and_keep_the_transformer(tmp_path: Path, algo: str) -> None:
    """The same input and options give a byte-identical model, within a point of FP32."""
    zoo.ensure_built(["transformer_digits"])
    outs = [tmp_path / f"{algo}_{i}.onnx" for i in range(2)]
    for out in outs:
        assert main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(out), "--mode", "weight-only",
                     "--algo", algo, "--calib", str(zoo.zoo_dir() / "transformer_digits.calib.npz"), "-q",
                     "--no-self-check"]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert zoo.evaluate("transformer_digits", outs[0]) >= zoo.evaluate("transformer_digits") - 0.01


def test_eight_bit_auto_picks_the_layer_that_costs_the_model_most() -> None:
    """``eight_bit=("auto:0.34",)``: one of three equal layers may go 8-bit; the middle one, whose blocks
    each hold an outlier (4-bit rounding crushes the rest of the block), is picked, not an end; the
    leave-one-out gains match a numpy reference of the same chain."""
    from onnxq.calibration.data import CalibrationData
    from onnxq.passes.quantization import _int4
    from onnxq.passes.quantization.quantize_weights_int4 import AUTO_SAMPLES, _most_sensitive

    rng = np.random.default_rng(5)
    weights = {f"w{i}": (rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32) for i in (1, 2, 3)}
    weights["w2"][::BLOCK] *= 12.0  # one outlier row per block of the middle weight
    x = rng.standard_normal((AUTO_SAMPLES, 4, K)).astype(np.float32)
    data = CalibrationData.from_source({"x": x})

    model = build(CHAIN, **weights)
    result = apply(model, Pipeline([QuantizeWeightsInt4(block_size=BLOCK, eight_bit=("auto:0.34",))]),
                   PassContext.with_resources([data]))
    bits = [n.attributes.get_int("bits", 0) for n in model.graph]
    assert bits == [4, 8, 4], bits
    assert result.stats["quantize-weights-int4.eight_bit_chosen_by_sensitivity"] == 1

    model = build(CHAIN, **weights)
    nodes = [n for n in model.graph if n.op_type == "MatMul"]
    picked, gain = _most_sensitive(model, nodes, data, QuantizeWeightsInt4.Options(block_size=BLOCK), 0.34)
    q = {b: {k: _int4.rtn(w, BLOCK, True, bits=b).dequantize(K) for k, w in weights.items()} for b in (4, 8)}

    def error(swapped: str | None) -> float:
        w = {k: (q[8][k] if k == swapped else q[4][k]) for k in weights}
        ref = x @ weights["w1"] @ weights["w2"] @ weights["w3"]
        got = x @ w["w1"] @ w["w2"] @ w["w3"]
        return float(np.sum((ref.astype(np.float64) - got) ** 2) / np.sum(ref.astype(np.float64) ** 2))

    expected = {n.name: error(None) - error(f"w{i}") for i, n in enumerate(nodes, start=1)}
    assert picked == [nodes[1].name]
    for name, value in expected.items():
        assert gain[name] == pytest.approx(value, rel=1e-2, abs=1e-9)  # float32 sums in another order
    assert max(gain, key=gain.__getitem__) == nodes[1].name


def test_eight_bit_auto_reads_external_weights_from_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model in external data, run from another working directory: the analysis session finds the
    weights it does not feed (a bias) in the model's folder; a weight that is also a graph input
    (overridable) is no candidate."""
    import onnx

    from onnxq.calibration.data import CalibrationData

    text = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[M, {K}] x, float[{K}, {K}] w3) => (float[M, {K}] y) {{
  a = MatMul(x, w1)
  b = MatMul(a, w2)
  c = Add(b, bias)
  y = MatMul(c, w3)
}}"""
    rng = np.random.default_rng(6)
    proto = onnx.parser.parse_model(text)
    for name, array in {"bias": np.ones(K, np.float32), **{f"w{i}": rng.standard_normal((K, K)).astype(np.float32)
                                                         for i in (1, 2, 3)}}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    path = tmp_path / "m.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    monkeypatch.chdir(tmp_path.parent)
    model = ir.load(path)
    data = CalibrationData.from_source({"x": rng.standard_normal((4, 2, K)).astype(np.float32)})
    result = apply(model, Pipeline([QuantizeWeightsInt4(block_size=BLOCK, eight_bit=("auto:0.5",))]),
                   PassContext.with_resources([data]))
    assert result.stats["quantize-weights-int4.matmuls_int8"] == 1
    assert result.stats["quantize-weights-int4.matmuls_int4"] == 1
    assert [n.op_type for n in model.graph][-1] == "MatMul"  # w3 stays: an input can override it


@pytest.mark.parametrize("form", ["nbits", "qdq"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_embeddings_to_4_bit_blocks_along_the_hidden_axis(form: str, symmetric: bool) -> None:
    """``embeddings=True``: a Gather on a constant table becomes GatherBlockQuantized (nbits) or reads a
    blocked DequantizeLinear on axis 1 (qdq); the rows it returns are the table's rows rounded per
    block of the hidden axis (the layout checked against RTN's own blocks); a table read twice (an LM head tied
    to it) stays as it is."""
    v, h = 50, 2 * BLOCK
    text = f"""<ir_version: 10, opset_import: ["" : 21]>
g (int64[N] ids) => (float[N, {h}] y, float[N, {h}] e, float[N, {h}] f) {{
  y = Gather(table, ids)
  e = Gather(tied, ids)
  f = Gather(tied, ids)
}}"""
    rng = np.random.default_rng(8)
    table = rng.standard_normal((v, h)).astype(np.float32)
    model = build(text, table=table, tied=rng.standard_normal((v, h)).astype(np.float32))
    result = apply(model, Pipeline([QuantizeWeightsInt4(block_size=BLOCK, format=form, symmetric=symmetric,
                                                        embeddings=True)]), PassContext.with_resources([]))
    assert result.stats["quantize-weights-int4.gathers_int4"] == 1
    ids = np.array([0, 3, 49, 7], np.int64)
    y = session(model).run(["y"], {"ids": ids})[0]
    # reference: each row in blocks of BLOCK along the hidden axis, rounded as RTN rounds a MatMul
    # weight's blocks along K (tested byte for byte against onnxruntime above)
    from onnxq.passes.quantization import _int4

    rounded = _int4.rtn(table.T, BLOCK, symmetric).dequantize(h).T
    np.testing.assert_allclose(y, rounded[ids], rtol=1e-6, atol=1e-7)
    assert np.abs(y - table[ids]).max() > 0  # rounded, not the float table
    ops = [n.op_type for n in model.graph]
    assert ops.count("Gather") == (2 if form == "nbits" else 3)
    assert ("GatherBlockQuantized" in ops) == (form == "nbits")
