"""--target nnapi: what onnxruntime's NNAPI EP takes (its usability checker agrees), in NNAPI's types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

import onnxq
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model, save_model
from onnxq.targets import get_target, mobile
from tests.passes.quantization.qdq_helpers import build

BRANCHES = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 16, 16] x) => (float[N, 16, 8, 8] y) {
  a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
  r = Relu(a)
  p = AveragePool<kernel_shape = [2, 2], strides = [2, 2]>(r)
  c = Conv<pads = [1, 1, 1, 1]>(p, w2, b2)
  k = Concat<axis = 1>(p, c)
  r2 = Conv<pads = [1, 1, 1, 1]>(p, w3, b3)
  s = Add(k, r2)
  y = Mul(s, s)
}"""


def _types(model: ir.Model) -> tuple[set[str], dict[str, tuple[str, tuple[int, ...], bool]]]:
    activations = {n.inputs[2].const_value.dtype.name for n in model.graph if n.op_type == "QuantizeLinear"}
    weights = {}
    for node in model.graph:
        if node.op_type in ("Conv", "Gemm") and node.inputs[1] is not None:
            dq = node.inputs[1].producer()
            assert dq is not None and dq.op_type == "DequantizeLinear", node.name
            zero = dq.inputs[2].const_value.numpy()
            weights[node.name] = (dq.inputs[0].const_value.dtype.name, tuple(dq.inputs[1].const_value.shape),
                                  bool(np.all(zero == 0)))
    return activations, weights


def test_the_example_runs_entirely_on_nnapi_in_its_types(tmp_path: Path) -> None:
    model, report = onnxq.quantize(load_model(example_model_path()), str(example_inputs_path()), target="nnapi")
    activations, weights = _types(model)
    assert activations == {"UINT8"}
    # Conv per-channel, Gemm per-tensor, int8 with zero point 0 ("u8s8" in the NNAPI EP's source)
    assert all(dtype == "INT8" and zero_is_0 for dtype, _, zero_is_0 in weights.values()), weights
    assert {op: len(shape) for name, (_, shape, _) in weights.items()
            for op in [next(n.op_type for n in model.graph if n.name == name)]} == {"Conv": 1, "Gemm": 0}
    assert [d for d in model.graph.inputs[0].shape] == [1, 1, 8, 8]  # fixed: NNAPI runs static shapes
    path = tmp_path / "nnapi.onnx"
    save_model(model, path)
    found = mobile.partitions(path, "nnapi")
    assert (found.supported, found.partitions, found.unsupported) == (found.nodes, 1, [])
    # fidelity on the QDQ graph's reference arithmetic, not on this CPU's u8s8 kernels
    assert report.self_check is not None and report.self_check.outputs[0].sqnr_db > 30
    assert any("reference arithmetic" in note for note in report.self_check.notes)


def test_adds_concats_and_pools_stay_on_nnapi(tmp_path: Path) -> None:
    model = build(BRANCHES, w1=(8, 3, 3, 3), b1=(8,), w2=(8, 8, 3, 3), b2=(8,), w3=(16, 8, 3, 3), b3=(16,),
                  )
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(12)]
    quantized, report = onnxq.quantize(model, feeds, target=get_target("nnapi"))
    ops = {n.op_type for n in quantized.graph}
    assert {"QuantizeLinear", "DequantizeLinear", "Concat", "AveragePool", "Add", "Mul"} <= ops
    path = tmp_path / "branches.onnx"
    save_model(quantized, path)
    found = mobile.partitions(path, "nnapi")
    assert (found.supported, found.partitions) == (found.nodes, 1), found.unsupported
    assert all(o.sqnr_db > 25 for o in report.self_check.outputs)


def test_hardsigmoid_is_written_out_for_nnapi(tmp_path: Path) -> None:
    # NNAPI has no HardSigmoid (its table, and onnxruntime inlines HardSwish into one): a
    # squeeze-excite gate must become Mul / Add / Clip to stay in the partition.
    model = build("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 8, 8] x) => (float[1, 8, 8, 8] y) {
      c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
      m = GlobalAveragePool(c)
      e = Conv(m, w2, b2)
      h = HardSigmoid<alpha = 0.2, beta = 0.5>(e)
      y = Mul(c, h)
    }""", w=(8, 8, 3, 3), b=(8,), w2=(8, 8, 1, 1), b2=(8,))
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 8, 8, 8)).astype(np.float32)} for _ in range(12)]
    quantized, report = onnxq.quantize(model, feeds, target="nnapi")
    assert report.stats["lower-hardswish.hardsigmoid_lowered"] == 1
    assert "HardSigmoid" not in {n.op_type for n in quantized.graph}
    path = tmp_path / "se.onnx"
    save_model(quantized, path)
    found = mobile.partitions(path, "nnapi")
    assert (found.supported, found.partitions) == (found.nodes, 1), found.unsupported
    assert all(o.sqnr_db > 25 for o in report.self_check.outputs), [o.sqnr_db for o in report.self_check.outputs]
    # ort-cpu has a HardSigmoid kernel: it is left alone there
    _, cpu = onnxq.quantize(model, feeds, target="ort-cpu", self_check=False)
    assert "lower-hardswish.hardsigmoid_lowered" not in cpu.stats
