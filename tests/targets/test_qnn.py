"""qnn: Qualcomm's HTP profile, checked on the HTP simulator that onnxruntime-qnn ships."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.targets import get_target, qnn_htp

needs_htp = pytest.mark.skipif(not qnn_htp.available(), reason=f"HTP simulator not installed: {qnn_htp.INSTALL_HINT}")


def test_profile_rules() -> None:
    target = get_target("qnn")
    conv = ir.Node("", "Conv", [None, None])
    matmul = ir.Node("", "MatMul", [None, None])
    assert target.weight_axis(conv, 4) == 0 and target.weight_axis(matmul, 2) is None  # per-channel: Conv only
    assert target.static_shapes and target.quantize_graph_outputs
    assert target.activation_qrange() == (0, 255) and target.weight_qrange() == (-127, 127)
    with pytest.raises(Exception, match="does not apply"):
        get_target("qnn", cpu="avx2")


def _digits() -> tuple[ir.Model, list[dict[str, np.ndarray]], str]:
    from models import zoo
    from onnxq.ir.io import load_model

    zoo.ensure_built(["digits_cnn"])
    calib = zoo.load_calib("digits_cnn")
    samples = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(48)]
    return load_model(zoo.model_path("digits_cnn")), samples, "digits_cnn"


def test_dynamic_input_needs_samples_for_its_shape() -> None:
    import onnxq
    from onnxq.errors import OptionError

    model, _, _ = _digits()
    if all(v.shape is not None and v.shape.is_static() for v in model.graph.inputs):
        model.graph.inputs[0].shape = ir.Shape(["N", *list(model.graph.inputs[0].shape)[1:]])
    with pytest.raises(OptionError, match="static shapes only"):
        onnxq.quantize(model, None, target="qnn")


@needs_htp
def test_quantized_for_qnn_runs_entirely_on_the_htp_and_keeps_its_answers() -> None:
    import onnxq

    model, samples, _ = _digits()
    quantized, report = onnxq.quantize(model, samples, target="qnn")
    check = report.self_check
    assert check is not None and check.offload is not None, report
    # NOTE: every node on QNN, and the session loads with the CPU fallback disabled
    assert check.offload.complete, check.offload.summary()
    assert check.offload.on_qnn == check.offload.nodes > 0
    assert [i.shape.is_static() for i in quantized.graph.inputs] == [True]
    (out,) = check.outputs  # NOTE: the HTP simulator's own outputs against FP32 on the held-back samples
    assert out.top1_agreement is not None and out.top1_agreement >= 0.9, out
    assert any("HTP simulator" in n for n in check.notes)


@needs_htp
def test_a_graph_quantized_for_ort_cpu_falls_back_and_the_nodes_are_named() -> None:
    import onnxq

    model, samples, _ = _digits()
    quantized, _ = onnxq.quantize(model, samples, target="ort-cpu", self_check=False)
    if not all(v.shape is not None and v.shape.is_static() for v in quantized.graph.inputs):
        quantized.graph.inputs[0].shape = ir.Shape(list(samples[0]["input"].shape))
    offload = qnn_htp.offload(quantized)
    assert not offload.complete and offload.fallbacks, offload
    assert offload.refusal  # NOTE: refused with the CPU fallback disabled
    assert offload.on_qnn + len(offload.fallbacks) == offload.nodes


@needs_htp
def test_check_names_the_nodes_left_to_the_cpu(tmp_path) -> None:
    import onnxq
    from onnxq.validation.check import check

    model, samples, _ = _digits()
    quantized, _ = onnxq.quantize(model, samples, target="ort-cpu", self_check=False)
    quantized.graph.inputs[0].shape = ir.Shape(list(samples[0]["input"].shape))
    report = check(quantized, target="qnn")
    offload = [f for f in report.findings if f.rule == "qnn-offload" and f.severity == "error"]
    assert offload and any(f.node for f in offload), [str(f) for f in report.findings]
    qnn_model, _ = onnxq.quantize(_digits()[0], samples, target="qnn", self_check=False)
    assert not [f for f in check(qnn_model, target="qnn").findings if f.severity == "error"]


@needs_htp
def test_sixteen_bit_activations_run_on_the_htp_and_are_finer() -> None:
    import onnxq

    model, samples, _ = _digits()
    a8, r8 = onnxq.quantize(model, samples, target="qnn")
    a16, r16 = onnxq.quantize(_digits()[0], samples, target="qnn-a16")
    assert a16.opset_imports[""] >= 21  # NOTE: 16-bit QuantizeLinear exists from opset 21
    q_types = {n.outputs[0].dtype for n in a16.graph if n.op_type == "QuantizeLinear"}
    assert q_types == {ir.DataType.UINT16}, q_types
    assert r16.self_check is not None and r16.self_check.offload.complete, r16.self_check.offload.summary()
    # NOTE: 8-bit weights bound the gain here (about +2 dB on digits; fer_emotion 26.4 -> 32.9 dB)
    assert r16.self_check.outputs[0].sqnr_db > r8.self_check.outputs[0].sqnr_db + 1, (
        r16.self_check.outputs[0], r8.self_check.outputs[0])


@needs_htp
def test_cli_writes_a_context_model_that_loads_on_qnn(tmp_path) -> None:
    import onnx

    from models import zoo
    from onnxq.cli import main

    zoo.ensure_built(["digits_cnn"])
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{k: v[:32] for k, v in zoo.load_calib("digits_cnn").items()})
    out = tmp_path / "q.onnx"
    argv = ["quantize", str(zoo.model_path("digits_cnn")), "-o", str(out), "--calib", str(calib),
            "--target", "qnn", "--no-guard", "--qnn-context", "--json"]
    assert main(argv) == 0
    context = tmp_path / "q_ctx.onnx"
    ops = [n.op_type for n in onnx.load(context).graph.node]
    assert "EPContext" in ops and "Conv" not in ops, ops  # NOTE: the compiled HTP graph, one node
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "q.onnx", "q_ctx.onnx"]
    assert main(argv[:-2] + ["--target", "ort-cpu", "--qnn-context"]) == 2
