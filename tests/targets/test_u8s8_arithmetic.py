"""u8s8 integer products as each CPU kind computes them, emulated in numpy, against onnxruntime here.

onnxruntime's x86 u8s8 GEMM on AVX2 without VNNI multiplies with ``vpmaddubsw``: each pair of
adjacent products along K is summed into a *saturating* int16, then the pairs are added in int32
(``vpmaddwd``). With VNNI (and on arm64) the products accumulate in int32 directly, exactly. The
``ort-cpu`` profile gives AVX2 7-bit weights because then no pair can leave int16
(255 * 64 * 2 = 32640). These tests hold on either kind by construction: onnxruntime on this
machine must equal the reference of *this* machine's kind, bit for bit, and both references are
checked against each other on any machine.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxq.framework.context import PassContext
from onnxq.passes.quantization.quantize_dynamic import QuantizeDynamic
from onnxq.targets import get_target, ort_cpu
from onnxq.targets.ort_cpu import cpu_kind


def u8s8_accumulate(a: np.ndarray, w: np.ndarray, *, saturating: bool) -> np.ndarray:
    """int32 ``a @ w`` for uint8 ``a`` [M, K] and int8 ``w`` [K, N], as the CPU kind computes it."""
    a64, w64 = a.astype(np.int64), w.astype(np.int64)
    if not saturating:
        return (a64 @ w64).astype(np.int32)
    m, k = a.shape
    if k % 2:
        a64 = np.pad(a64, ((0, 0), (0, 1)))
        w64 = np.pad(w64, ((0, 1), (0, 0)))
        k += 1
    pairs = (a64.reshape(m, k // 2, 2, 1) * w64.reshape(1, k // 2, 2, -1)).sum(axis=2)
    return np.clip(pairs, -32768, 32767).sum(axis=1).astype(np.int32)


def _matmul_integer(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [a.shape[0], w.shape[1]])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a})[0]


def _operands(wmax: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (16, 64), dtype=np.uint8)
    w = rng.integers(-wmax, wmax + 1, (64, 8), dtype=np.int8)
    return a, w


def test_the_two_references_differ_on_full_range_weights_only() -> None:
    a, w = _operands(127)
    exact, saturated = (u8s8_accumulate(a, w, saturating=s) for s in (False, True))
    assert (exact != saturated).mean() > 0.3  # mid-range u8 times full-range s8: most pairs overflow
    a7, w7 = _operands(64)
    worst = np.full((1, 64), 255, np.uint8), np.full((64, 1), 64, np.int8)
    for x, y in ((a7, w7), worst, (worst[0], -worst[1])):
        assert np.array_equal(u8s8_accumulate(x, y, saturating=True), u8s8_accumulate(x, y, saturating=False))


def test_onnxruntime_computes_what_this_cpu_kind_computes() -> None:
    a, w = _operands(127)
    got = _matmul_integer(a, w)
    want = u8s8_accumulate(a, w, saturating=cpu_kind() == "avx2")
    assert np.array_equal(got, want), f"{cpu_kind()}: onnxruntime differs from the reference of its kind"


def test_seven_bit_weights_are_exact_on_every_cpu_kind() -> None:
    a, w = _operands(64, seed=1)
    assert np.array_equal(_matmul_integer(a, w), u8s8_accumulate(a, w, saturating=False))


@pytest.mark.parametrize(("kind", "reduce_range"), [("avx2", True), ("vnni", False), ("arm64", False)])
def test_detected_kind_decides_the_weight_range(monkeypatch, kind: str, reduce_range: bool) -> None:
    monkeypatch.delenv("ONNXQ_CPU", raising=False)
    monkeypatch.setattr(ort_cpu, "detect_cpu", lambda *a, **k: kind)
    target = get_target("ort-cpu")
    assert target.cpu == kind and target.reduce_range is reduce_range
    assert target.cpu_note.startswith(f"detected {kind}")
    # quantize-dynamic without a Target follows the detected kind too
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8)) * 0.3).astype(np.float32)
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [onnx.numpy_helper.from_array(w, "W")]), opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    QuantizeDynamic().run(model, PassContext())
    q = model.graph.initializers["W_quantized"].const_value.numpy()
    assert np.abs(q).max() == (64 if reduce_range else 127)
