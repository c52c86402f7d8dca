"""quantize-weights-int4: 4-bit blocks along K (MatMulNBits), checked against the float weights they replace."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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


def test_hqq_is_a_4_bit_block_code_no_worse_than_rtn_on_average() -> None:
    pytest.importorskip("torch", reason="onnxruntime's HQQ runs on torch (the [all] extra installs it)")
    w, rtn, _ = _dequantized("rtn")
    _, hqq, _ = _dequantized("hqq")
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


def test_weight_only_is_refused_off_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo.ensure_built(["transformer_digits"])
    code = main(["quantize", str(zoo.model_path("transformer_digits")), "-o", str(tmp_path / "q.onnx"),
                 "--mode", "weight-only", "--target", "tensorrt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MatMulNBits" in err[0], err
