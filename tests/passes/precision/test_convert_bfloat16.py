"""convert-bfloat16: bfloat16 weights and compute from the ONNX schemas, float32 islands, lazy weights, emulation."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.ir.interop import copy_model
from onnxq.passes.precision import ConvertBFloat16
from onnxq.passes.precision._low_precision import emulate
from onnxq.runtime import session
from tests.passes.quantization.qdq_helpers import build

BF16 = ir.DataType.BFLOAT16
# ``Range`` has no bfloat16 form at opset 22: an island, with its float32 ``start`` shared with a
# bfloat16 reader (``Add``), so the initializer is needed in both types.
TEXT = """<ir_version: 10, opset_import: ["" : 22]>
g (float[2, 16] x) => (float[2, 8] y, float[4] r) {
  h = MatMul(x, w1)
  hb = Add(h, b1)
  a = Relu(hb)
  y = MatMul(a, w2)
  r = Range(start, limit, delta)
  s = Add(start, start)
}"""


def _model() -> ir.Model:
    return build(TEXT, w1=(16, 16), b1=(16,), w2=(16, 8), start=np.array(0.5, np.float32),
                 limit=np.array(4.5, np.float32), delta=np.array(1.0, np.float32))


def _x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)


def _bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def test_compute_goes_bfloat16_with_a_float32_island_and_casts_only_at_borders() -> None:
    model = _model()
    result = apply(model, Pipeline([ConvertBFloat16()]), PassContext())
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    out = {n.outputs[0].name: n.outputs[0].dtype for n in model.graph if n.op_type != "Cast"}
    assert out["h"] == out["hb"] == out["a"] == BF16
    assert out["r"] == ir.DataType.FLOAT  # the island
    assert [d.message for d in result.diagnostics] == ["Range has no bfloat16 form at opset 22"]
    # graph I/O keep float32; Casts: x in, y out, none around the island (its inputs are initializers)
    assert [v.dtype for v in (*model.graph.inputs, *model.graph.outputs)] == [ir.DataType.FLOAT] * 3
    assert sum(n.op_type == "Cast" for n in model.graph) == 2
    assert not any(n.op_type == "Cast" and n.inputs[0].producer() is not None
                   and n.inputs[0].producer().op_type == "Cast" for n in model.graph)
    # the shared initializer: float32 for Range, a bfloat16 copy for Add
    add = next(n for n in model.graph if n.outputs[0].name == "s")
    rng = next(n for n in model.graph if n.op_type == "Range")
    assert rng.inputs[0].dtype == ir.DataType.FLOAT and add.inputs[0].dtype == add.inputs[1].dtype == BF16
    assert result.stats["convert-bfloat16.nodes_bfloat16"] == 5


def test_emulation_matches_a_numpy_bfloat16_reference_and_leaves_the_model_alone() -> None:
    model = _model()
    weights = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}
    reference = session(copy_model(model)).run(None, {"x": _x()})[0]
    apply(model, Pipeline([ConvertBFloat16()]), PassContext())
    before = ir.to_proto(model).SerializeToString()
    emulated = session(emulate(model, BF16)).run(None, {"x": _x()})[0]
    assert ir.to_proto(model).SerializeToString() == before
    # numpy: weights stored in bfloat16, every op in float32 then rounded to bfloat16
    x = _bf16(_x())
    h = _bf16(x @ _bf16(weights["w1"]))
    hb = _bf16(h + _bf16(weights["b1"]))
    a = _bf16(np.maximum(hb, 0))
    y = _bf16(a @ _bf16(weights["w2"]))
    np.testing.assert_allclose(emulated, y, rtol=2**-7, atol=1e-6)
    # rounding really happened, and stays within bfloat16's precision of float32
    error = np.abs(emulated - reference).max() / np.abs(reference).max()
    assert 1e-5 < error < 3e-2


def test_weights_convert_lazily_one_at_a_time() -> None:
    model = _model()
    reads: list[str] = []
    w1 = model.graph.initializers["w1"]
    source = w1.const_value

    def read() -> ir.TensorProtocol:
        reads.append("w1")
        return source

    w1.const_value = ir.LazyTensor(read, dtype=ir.DataType.FLOAT, shape=source.shape, name="w1")
    apply(model, Pipeline([ConvertBFloat16()]), PassContext())
    assert reads == [] and isinstance(w1.const_value, ir.LazyTensor) and w1.dtype == BF16
    array = w1.const_value.numpy()  # what saving does, tensor by tensor
    assert reads == ["w1"] and array.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(array, source.numpy().astype(ml_dtypes.bfloat16))


def test_io_types_and_blocked_ops() -> None:
    model = _model()
    apply(model, Pipeline([ConvertBFloat16(keep_io_types=False, block=("Relu",))]), PassContext())
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert model.graph.inputs[0].dtype == BF16 and model.graph.outputs[0].dtype == BF16
    relu = next(n for n in model.graph if n.op_type == "Relu")
    assert relu.outputs[0].dtype == ir.DataType.FLOAT
    # the island reads and writes through one Cast each
    assert relu.inputs[0].producer().op_type == "Cast" and {u.node.op_type for u in relu.outputs[0].uses()} == {"Cast"}


def test_cli_converts_the_example_through_opset_22(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bf16.onnx"
    args = ["convert-precision", str(example_model_path()), "--to", "bf16", "-o", str(out),
            "--calib", str(example_inputs_path()), "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["within_floor"] and doc["checked"] == "float32 emulation" and doc["stats"]["convert-opset.to_opset"] == 22
    [row] = doc["outputs"]
    assert doc["floor_db"] <= row["sqnr_db"] < 80  # rounded, not exact
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer)
    assert main(["convert-precision", str(example_model_path()), "--keep-norms", "-o", str(tmp_path / "x.onnx")]) == 2


def _parsed(text: str, **initializers: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in initializers.items())
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("low", [ir.DataType.FLOAT16, BF16])
def test_edge_cases_stay_valid_and_exact_where_float32_is_kept(low: ir.DataType) -> None:
    from onnxq.passes.precision._low_precision import convert

    # a Constant written as value_float(s); a Constant and a Cast read only by a float32 island (1e5
    # overflows float16); a Resize whose float32-only scales come from a Constant; an initializer that
    # is also a graph input (its type is the caller's); a float16 op already in the model
    text = """<ir_version: 10, opset_import: ["" : 22]>
g (float[1, 1, 1, 200] x, float[2] w) => (float[1, 1, 1, W] r, float[2] y, float[2] z, float[2] v, float[2] u) {
  c = Constant <value_floats = [1.0, 1.0, 1.0, 1.005]> ()
  r = Resize <mode = "nearest"> (x, , c)
  k = Constant <value_float = 2.0> ()
  big = Constant <value = float[2] {100000.0, 1.0}> ()
  y = Mul(big, k)
  n = Cast <to = 1> (i)
  z = Mul(n, k)
  v = Mul(w, k)
  h = Cast <to = 10> (w)
  t = Relu(h)
  u = Cast <to = 1> (t)
}"""
    model = _parsed(text, w=np.array([1.5, 2.5], np.float32), i=np.array([70000, 3], np.int64))
    convert(model, low, block_nodes=(), block_ops=("Mul",) if low == ir.DataType.FLOAT16 else ("Mul", "Resize"))
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inputs = {v.name: v.dtype for v in model.graph.inputs}
    assert inputs == {"x": ir.DataType.FLOAT, "w": ir.DataType.FLOAT}
    if low == ir.DataType.FLOAT16:
        r, y, z, v, u = session(model).run(None, {"x": np.arange(200, dtype=np.float32).reshape(1, 1, 1, 200),
                                                   "w": np.array([1.5, 2.5], np.float32)})
        assert r.shape == (1, 1, 1, 201)
        np.testing.assert_array_equal(y, [2e5, 2.0])  # float32 where it is read in float32: no inf
        np.testing.assert_array_equal(z, [1.4e5, 6.0])
        np.testing.assert_array_equal(u, [1.5, 2.5])
