"""The self-check inside ``onnxq.quantize``: held-back samples, wasted Q/DQ removed, latency and fidelity."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir

import onnxq
from onnxq import runtime
from onnxq.targets import get_target
from tests.quantization import _fragile


def test_held_back_samples_are_a_quarter_at_most_32() -> None:
    for count, held in ((40, 10), (200, 32)):
        feeds = [{"x": row} for row in _fragile.samples(count)["x"]]
        _, report = onnxq.quantize(_fragile.model(), feeds, cpu="avx2")
        assert report.holdout_samples == held and report.calibration_samples == count - held, report
        assert report.self_check is not None and report.self_check.samples == held


def test_fidelity_and_latency_are_reported_and_a_collapse_is_warned() -> None:
    feeds = [{"x": row} for row in _fragile.samples(96)["x"]]
    _, report = onnxq.quantize(_fragile.model(), feeds, cpu="avx2")
    check = report.self_check
    assert check is not None and check.latency is not None
    assert check.latency.float_ms > 0 and check.latency.speedup is not None and check.latency.speedup > 0
    [output] = check.outputs
    assert output.top1_agreement is not None and output.top1_agreement < 0.97  # the fragile branch collapses
    assert any("below the fidelity floor" in w and "top-1" in w for w in check.warnings), check.warnings


def test_qdq_that_onnxruntime_does_not_fuse_is_removed_from_the_output() -> None:
    # A profile that wrongly believes Tanh has an integer kernel puts Q/DQ between two Tanh;
    # onnxruntime runs both in float, so that pair only adds time and the self-check removes it
    # from the written model (the MatMuls keep theirs: they fuse).
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16] x) => (float[N, 16] y) {
      h = MatMul(x, w1)
      a = Tanh(h)
      b = Tanh(a)
      y = MatMul(b, w2)
    }""")
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w2")])
    real = get_target("ort-cpu", cpu="avx2")
    wrong = dataclasses.replace(real, integer_ops=real.integer_ops | {"Tanh"})
    feeds = [{"x": rng.normal(0, 1, (1, 16)).astype(np.float32)} for _ in range(32)]
    model, report = onnxq.quantize(ir.from_proto(proto), feeds, target=wrong)
    assert report.stats.get("self-check.unfused_qdq_removed", 0) >= 2, report.stats
    assert any("did not fuse, Q/DQ removed" in d.message for d in report.diagnostics)
    second = [n for n in model.graph if n.op_type == "Tanh"][1]
    assert second.inputs[0] is not None and second.inputs[0].producer().op_type == "Tanh"
    assert report.self_check is not None and report.self_check.fusion is not None
    assert not report.self_check.fusion.wasted
    want = runtime.run(ir.from_proto(proto), feeds[0])["y"]
    assert runtime.run(model, feeds[0])["y"].shape == want.shape
