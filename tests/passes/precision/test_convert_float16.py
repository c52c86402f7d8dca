"""convert-float16: float16 weights and compute, a float32 island where a calibrated range overflows fp16."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.calibration import calibrate
from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.ir.interop import copy_model
from onnxq.passes.precision import ConvertFloat16
from onnxq.runtime import session
from tests.passes.quantization.qdq_helpers import build

# ``big`` reaches ~1e5 (fp16 overflows at 65504); the scale-down after it brings it back.
OVERFLOW = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 16] x) => (float[1, 8] y) {
  h = MatMul(x, w1)
  big = Mul(h, k)
  small = Mul(big, r)
  t = Tanh(small)
  y = MatMul(t, w2)
}"""


def _model() -> ir.Model:
    return build(OVERFLOW, w1=(16, 16), w2=(16, 8), k=np.array(3e4, np.float32), r=np.array(1e-4, np.float32))


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 16)).astype(np.float32) * 3} for _ in range(8)]


def _casts_of_casts(model: ir.Model) -> int:
    return sum(1 for n in model.graph if n.op_type == "Cast" and n.inputs[0].producer() is not None
               and n.inputs[0].producer().op_type == "Cast")


def test_an_overflowing_tensor_keeps_its_producer_in_float32_and_the_rest_is_float16() -> None:
    model = _model()
    reference = copy_model(model)
    ranges = calibrate(model, _feeds())
    assert max(abs(ranges["big"].min), abs(ranges["big"].max)) > 65504
    result = apply(model, Pipeline([ConvertFloat16()]), PassContext.with_resources([ranges]))
    [island] = [d for d in result.diagnostics if d.node]
    assert "big reaches" in island.message and "65504" in island.message
    out = {n.name: n.outputs[0].dtype for n in model.graph}
    # NOTE: unnamed nodes are named op_index; the overflowing tensor's producer and reader form the island
    assert out["Mul_1"] == out["Mul_2"] == ir.DataType.FLOAT
    assert out["MatMul_0"] == out["Tanh_3"] == out["MatMul_4"] == ir.DataType.FLOAT16
    assert [v.dtype for v in model.graph.inputs] == [v.dtype for v in model.graph.outputs] == [ir.DataType.FLOAT]
    assert {v.dtype for v in model.graph.initializers.values() if v.const_value is not None and v.const_value.size > 1} == {
        ir.DataType.FLOAT16}
    assert _casts_of_casts(model) == 0
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    ref, new = session(reference), session(model)
    for feed in _feeds():
        a, b = ref.run(None, feed)[0], new.run(None, feed)[0]
        assert b.shape == a.shape and b.dtype == np.float32 and np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, atol=0.02 * np.abs(a).max())


def test_without_samples_no_island_is_made_and_a_block_list_is_kept() -> None:
    model = _model()
    result = apply(model, Pipeline([ConvertFloat16(block=("Tanh",))]), PassContext.with_resources([]))
    assert not [d for d in result.diagnostics if d.node]
    out = {n.name: n.outputs[0].dtype for n in model.graph}
    assert out["Tanh_3"] == ir.DataType.FLOAT and out["Mul_1"] == out["Mul_2"] == ir.DataType.FLOAT16
    assert _casts_of_casts(model) == 0


def test_cli_converts_the_example_and_checks_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fp16.onnx"
    code = main(["convert-precision", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["within_floor"] and doc["samples"] == 32, doc
    [row] = doc["outputs"]
    assert row["dtype"] == "float32" and row["sqnr_db"] >= 50, row
    assert out.stat().st_size < example_model_path().stat().st_size * 0.7  # weights halved
    # NOTE: an unknown --calib path is one line, exit 2, nothing written
    again = tmp_path / "again.onnx"
    assert main(["convert-precision", str(example_model_path()), "-o", str(again), "--calib", "nope.npz"]) == 2
    assert not again.exists() and len(capsys.readouterr().err.strip().splitlines()) == 1
