"""End to end on zoo models: optimize, calibrate (min/max), insert-qdq + quantize-weights.

Each quantized model must pass the full checker, stay within 1 point of its FP32 metric, and
run every Conv / MatMul / Gemm on an integer kernel in the graph onnxruntime executes. Latency
is measured by ``measure_zoo.py`` (interleaved medians), not asserted here.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402
from tests.passes.quantization.measure_zoo import optimized_ops, quantize_zoo_model  # noqa: E402

pytestmark = pytest.mark.slow

#: Minimum integer kernels onnxruntime must run per model (measured: digits_cnn 3 QLinearConv +
#: QGemm; resnet 9 QLinearConv, 3 QLinearAdd, QGemm; mobilenet 21 QLinearConv; transformer 12
#: QLinearMatMul + 5 MatMulIntegerToFloat + QGemm).
EXPECTED = {
    "digits_cnn": {"QLinearConv": 3, "QGemm": 1},
    "resnet_digits": {"QLinearConv": 9, "QLinearAdd": 3, "QGemm": 1},
    "mobilenetv2_digits": {"QLinearConv": 21, "QGemm": 1},
    "transformer_digits": {"QLinearMatMul": 12, "QGemm": 1},
}
FLOAT_HEAVY = ("Conv", "FusedConv", "MatMul", "Gemm", "FusedGemm", "FusedMatMul")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_is_valid_accurate_and_fused(name: str, tmp_path: Path) -> None:
    zoo.ensure_built([name])
    out = tmp_path / f"{name}.int8.onnx"
    info = quantize_zoo_model(name, out)  # NOTE: for this machine's CPU kind, whose numbers are checked
    onnx.checker.check_model(onnx.load(out), full_check=True)
    base, quant = zoo.evaluate(name), zoo.evaluate(name, out)
    assert quant >= base - 0.01, f"{name}: metric {base:.4f} -> {quant:.4f}"
    ops = optimized_ops(out)
    for op, count in EXPECTED[name].items():
        assert ops.get(op, 0) >= count, f"{name}: {op} {ops.get(op, 0)} < {count} in {dict(ops)}"
    assert not any(ops.get(op, 0) for op in FLOAT_HEAVY), f"{name}: float kernels left in {dict(ops)}"
    assert info["stats"]["quantize-weights.weights_quantized"] >= sum(EXPECTED[name].values()) - 3


def test_avx2_profile_keeps_accuracy_on_resnet(tmp_path: Path) -> None:
    zoo.ensure_built(["resnet_digits"])
    out = tmp_path / "resnet.avx2.onnx"
    quantize_zoo_model("resnet_digits", out, cpu="avx2")
    assert zoo.evaluate("resnet_digits", out) >= zoo.evaluate("resnet_digits") - 0.01
    weights = [
        ir.serde.deserialize_tensor(t).numpy()
        for t in onnx.load(out).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)


def test_zoo_quantization_is_byte_identical_twice(tmp_path: Path) -> None:
    zoo.ensure_built(["digits_cnn"])
    blobs = []
    for i in range(2):
        out = tmp_path / f"q{i}.onnx"
        quantize_zoo_model("digits_cnn", out, cpu="vnni")  # structure only: bytes, not numbers
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]
    assert (
        collections.Counter(n.op_type for n in onnx.load(tmp_path / "q0.onnx").graph.node)["QuantizeLinear"]
        > 0
    )
