"""``onnxq.quantize`` (the driver, default options) on zoo models it is claimed to handle.

The README's claims: static INT8 valid and within 1 point of FP32 on every zoo model, including
opset 11/12 exports, which the driver lifts to opset 13 for per-channel weights (onnxruntime's
``quantize_static`` emits per-channel DequantizeLinear below opset 13 there, which onnxruntime
refuses to load), recurrent models and Keras/TFLite conversions. The metric is each model's own, on
its held-out split (several hundred samples), with the README's 1 point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

import onnxq
from tests.passes.quantization.qdq_helpers import HOST

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402

pytestmark = pytest.mark.slow

#: The README's budget: one point of the model's own metric.
BUDGET = 0.01


def _quantize(name: str, out: Path) -> onnxq.QuantizeReport:
    zoo.ensure_built([name])
    model, report = onnxq.quantize(onnxq.load_model(zoo.model_path(name)), zoo.load_calib(name), target=HOST)
    onnxq.save_model(model, out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    base, quant = zoo.evaluate(name), zoo.evaluate(name, out)
    assert quant >= base - BUDGET, f"{name}: {base:.4f} -> {quant:.4f}"
    return report


@pytest.mark.parametrize("name", ["resnet_digits_op11", "keras_cnn_op11", "lstm_gru_op12"])
def test_old_opsets_are_lifted_to_13_for_per_channel_weights(name: str, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    report = _quantize(name, out)
    before = onnx.load(zoo.model_path(name)).opset_import
    assert min(o.version for o in before if o.domain in ("", "ai.onnx")) < 13
    assert report.opset[0] < 13 <= report.opset[1] and report.per_channel, report.opset
    assert any("so weights can be per-channel" in d.message for d in report.diagnostics)
    model = ir.load(out)
    per_channel = [n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[1] is not None
                   and n.inputs[1].const_value is not None and n.inputs[1].const_value.numpy().size > 1]
    if name != "lstm_gru_op12":  # NOTE: its recurrent weights go to dynamic INT8 kernels, not to DQ
        assert per_channel, "no per-channel weight"


def test_onnxruntime_quantize_static_is_invalid_where_the_driver_is_valid(tmp_path: Path) -> None:
    # The other half of the claim, so the test fails if onnxruntime fixes it (update the README then).
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = "resnet_digits_op11"
    zoo.ensure_built([name])
    calib = zoo.load_calib(name)
    key = next(iter(calib))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{key: calib[key][i:i + 1]} for i in range(16)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.rows, None)

    out = tmp_path / "ort.onnx"
    quantize_static(str(zoo.model_path(name)), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    with pytest.raises(Exception, match="axis"):
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["lstm_gru", "crnn_ocr", "keras_cnn_savedmodel", "keras_cnn_tflite"])
def test_recurrent_and_converted_models_stay_within_budget(name: str, tmp_path: Path) -> None:
    report = _quantize(name, tmp_path / "q.onnx")
    assert report.self_check is not None and report.self_check.samples > 0
    assert sum(v for k, v in report.stats.items() if k.endswith("q_inserted")) > 0, "nothing quantized"
