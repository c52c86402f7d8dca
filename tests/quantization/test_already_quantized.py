"""A model that is already quantized: integer kernels are refused, carried QDQ scales are kept."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

import onnxq
from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.targets import qnn_htp
from tests.passes.quantization.qdq_helpers import HOST

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402


class _Reader(CalibrationDataReader):
    def __init__(self) -> None:
        with np.load(example_inputs_path()) as npz:
            self._it = iter([{"input": row[None]} for row in npz["input"][:16]])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _by_onnxruntime(tmp_path: Path, fmt: QuantFormat) -> Path:
    out = tmp_path / f"ort_{fmt.name.lower()}.onnx"
    quantize_static(str(example_model_path()), str(out), _Reader(), quant_format=fmt, per_channel=True)
    return out


def test_an_integer_kernel_model_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _by_onnxruntime(tmp_path, QuantFormat.QOperator)
    out = tmp_path / "again.onnx"
    code = main(["quantize", str(model), "-o", str(out), "--calib", str(example_inputs_path())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(model) in err[0] and "already quantized" in err[0] and "QLinearConv x3" in err[0]
    assert not out.exists()
    with pytest.raises(onnxq.errors.UserError, match="already quantized"):
        onnxq.quantize(onnxq.load_model(model), None, mode="dynamic")


def test_carried_qdq_scales_are_kept_not_quantized_twice(tmp_path: Path) -> None:
    model = _by_onnxruntime(tmp_path, QuantFormat.QDQ)
    with np.load(example_inputs_path()) as npz:
        feeds = [{"input": row[None]} for row in npz["input"][:40]]
    result, report = onnxq.quantize(onnxq.load_model(model), feeds, cpu="vnni")
    assert any("already carries" in d.message for d in report.diagnostics), report.diagnostics
    before = onnx.load(model)
    after = ir.to_proto(result)

    def scales(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
        return {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale")}

    kept = scales(before)
    assert kept and all(np.array_equal(kept[k], v) for k, v in scales(after).items() if k in kept)
    count = lambda proto, op: sum(n.op_type == op for n in proto.graph.node)  # noqa: E731
    assert count(after, "QuantizeLinear") == count(before, "QuantizeLinear")


# --- a PyTorch QAT export (zoo: digits_cnn_qat) --------------------------------------------
def _qat_model() -> tuple[Path, dict[str, np.ndarray]]:
    zoo.ensure_built(["digits_cnn_qat"])
    return zoo.model_path("digits_cnn_qat"), zoo.load_calib("digits_cnn_qat")


def _activation_scales(proto: onnx.ModelProto) -> set[float]:
    """Values of the scales of QuantizeLinear nodes that quantize activations (not weights)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {float(inits[n.input[1]].reshape(())) for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_a_pytorch_qat_export_keeps_its_scales_fuses_entirely_and_keeps_its_accuracy(tmp_path: Path) -> None:
    path, calib = _qat_model()
    result, report = onnxq.quantize(onnxq.load_model(path), calib, target=HOST)
    out = tmp_path / "qat_q.onnx"
    onnxq.save_model(result, out)
    before, after = onnx.load(path), onnx.load(out)
    kept = _activation_scales(before)
    assert len(kept) == 5 and kept <= _activation_scales(after), (kept, _activation_scales(after))
    check = report.self_check
    assert check is not None and check.fusion is not None
    # NOTE: the ConvBn fold, the run-time weight Q and the MaxPool / Flatten gap all completed:
    # every QDQ group on an integer kernel, nothing float with Q/DQ around it
    assert check.fusion.groups and not check.fusion.unfused, check.fusion.unfused
    assert {g.op_type for g in check.fusion.fused} >= {"Conv", "Gemm"}, check.fusion.fused
    base, quant = zoo.evaluate("digits_cnn_qat"), zoo.evaluate("digits_cnn_qat", out)
    assert quant >= base - 0.01, (base, quant)


@pytest.mark.skipif(not qnn_htp.available(), reason=f"HTP simulator not installed: {qnn_htp.INSTALL_HINT}")
def test_a_pytorch_qat_export_runs_entirely_on_the_htp() -> None:
    path, calib = _qat_model()
    _, report = onnxq.quantize(onnxq.load_model(path), calib, target="qnn")
    check = report.self_check
    assert check is not None and check.offload is not None and check.offload.complete, check
    (out,) = check.outputs  # NOTE: the HTP's own outputs against the QAT model on the held-back samples
    assert out.sqnr_db is not None and out.sqnr_db >= 30, out
