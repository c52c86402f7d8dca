"""Offline rounding is onnxruntime's QuantizeLinear, bit for bit (one function for every caller)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from onnxq.passes.quantization._common import along_axis, round_to_grid, weight_scales
from onnxq.passes.quantization.quantize_dynamic import quantize_symmetric
from onnxq.passes.recovery._layers import fake_quantize_weight


def _ort_quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None = None) -> np.ndarray:
    attrs = {"axis": axis} if axis is not None else {}
    node = onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)
    graph = onnx.helper.make_graph(
        [node], "q", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [onnx.helper.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(zero.dtype), list(x.shape))],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zero, "z")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _values(n: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    random = rng.normal(0, 40 * scale, n).astype(np.float32)
    # Exact ties k + 0.5 (and their float32 neighbours): where float64 division rounds differently.
    k = rng.integers(-120, 120, 2000).astype(np.float32)
    ties = ((k + np.float32(0.5)) * np.float32(scale)).astype(np.float32)
    near = np.concatenate([np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])
    return np.concatenate([random, ties, near]).astype(np.float32)


@pytest.mark.parametrize(("dtype", "zero", "qrange"), [(np.uint8, 128, (0, 255)), (np.int8, 0, (-128, 127))])
def test_round_to_grid_equals_quantize_linear_on_a_million_values(dtype, zero, qrange) -> None:
    scale = np.float32(0.0173)
    x = _values(1_000_000, float(scale))
    ours = round_to_grid(x, scale, zero, qrange, dtype)
    theirs = _ort_quantize(x, np.array(scale, np.float32), np.array(zero, dtype))
    assert ours.dtype == theirs.dtype
    assert np.array_equal(ours, theirs), int(np.sum(ours != theirs))
    # The float64 division this replaced disagrees with onnxruntime here (the bug it fixes).
    old = np.clip(np.rint(x.astype(np.float64) / np.float64(scale)) + zero, *qrange).astype(dtype)
    assert not np.array_equal(old, theirs)


def test_per_channel_weights_equal_quantize_linear() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    w[3] = 0.0  # a dead channel: scale 1, all zeros
    scale = weight_scales(w, (0,), 63)
    assert scale.shape == (16,) and scale[3] == 1.0 and np.all(scale > 0)
    ours = round_to_grid(w, along_axis(scale, w.ndim, 0), 0, (-63, 63), np.int8)
    theirs = _ort_quantize(w, scale, np.zeros(16, np.int8), axis=0)
    assert np.array_equal(ours, theirs)
    # The dynamic pass (uint8 shifted by 128) and the recovery passes' fake quantization agree.
    shifted = quantize_symmetric(w, scale, (0,), 63, unsigned=True)
    assert np.array_equal(shifted.astype(np.int16) - 128, ours.astype(np.int16))
    fake = fake_quantize_weight(w, 0, 63)
    assert np.array_equal(fake, ours.astype(np.float32) * along_axis(scale, w.ndim, 0))
    assert weight_scales(w, (), 63).shape == ()


def test_a_scalar_rounds_too() -> None:
    # Constants quantized by insert-qdq can be 0-d.
    assert round_to_grid(np.float32(0.5), np.float32(1.0), 0, (-128, 127), np.int8).shape == ()
    assert int(round_to_grid(np.array(2.5, np.float32), 1.0, 0, (-128, 127), np.int8)) == 2
