"""Self-check: fusion, latency and fidelity of a quantized model, with warnings that name the cause."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model
from onnxq.targets.ort_cpu import cpu_kind
from onnxq.validation.fusion import FusionReport, Group
from onnxq.validation.self_check import LatencyCheck, SelfCheckReport, _warn, self_check, sqnr_db
from tests.validation._graphs import FUSES, float_twin, model


class _Reader(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self._feeds = iter([{"input": images[i : i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@pytest.fixture(scope="module")
def example_pair(tmp_path_factory) -> tuple:
    """The bundled float example and an onnxruntime.quantization u8s8 per-channel QDQ copy of it."""
    images = np.load(example_inputs_path())["input"]
    out = tmp_path_factory.mktemp("q") / "q.onnx"
    quantize_static(str(example_model_path()), str(out), _Reader(images[:16]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=cpu_kind() == "avx2")  # NOTE: ORT's remedy for u8s8 saturation on AVX2
    return load_model(example_model_path()), load_model(out), images[16:]


def test_quantized_example_fuses_and_stays_faithful(example_pair) -> None:
    float_model, quant_model, held = example_pair
    report = self_check(float_model, quant_model, [{"input": held[:8]}, {"input": held[8:]}], latency_budget_s=0.5)
    assert report.samples == 2
    assert report.fusion is not None and report.fusion.unfused == []
    assert report.fusion.kernels["QLinearConv"] == 3
    assert report.latency is not None and report.latency.runs >= 10 and report.latency.quant_ms > 0
    [logits] = report.outputs
    assert logits.name == "logits" and logits.sqnr_db > 20 and logits.cosine > 0.99
    assert logits.top1_agreement is not None and logits.top1_agreement >= 0.9
    assert report.layers and all(layer.sqnr_db > 20 for layer in report.layers)
    assert not any("fidelity floor" in w for w in report.warnings)
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["lines"][0].startswith("self-check (ort-cpu)")
    assert doc["fusion"]["unfused"] == [] and doc["outputs"][0]["top1_agreement"] >= 0.9


def test_saturated_input_is_named_as_the_cause() -> None:
    # Inputs up to 50 through a Q whose range ends at 5.1: the output collapses, the input is to blame.
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(0, 50, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    report = self_check(float_twin(FUSES), model(FUSES), samples, latency_budget_s=0.2)
    [warning] = [w for w in report.warnings if "fidelity floor" in w]
    assert "output 'y' below the fidelity floor" in warning
    assert "error starts at input 'x' ('x'" in warning
    assert {layer.tensor for layer in report.layers} == {"x", "r", "p", "f"}
    assert report.ok is False and any(d.severity.value == "warning" for d in report.diagnostics())


def test_slower_than_float_names_unfused_groups() -> None:
    fusion = FusionReport({}, 2, 3, [Group("Conv_3", "Conv", False, "FusedConv", "output Q has zero point 128")], {},
                          ["ConvInteger present (1 nodes): slow on x86"])
    report = SelfCheckReport("ort-cpu", 1, fusion, LatencyCheck(1.0, 2.0, 10), [], [])
    _warn(report, sqnr_floor_db=20, top1_floor=0.97)
    [warning] = report.warnings
    assert warning.startswith("quantized model is slower than float (0.50x)")
    assert "Conv_3" in warning and "zero point 128" in warning and "ConvInteger" in warning


def test_other_targets_and_missing_samples_are_said() -> None:
    report = self_check(float_twin(FUSES), model(FUSES), None, target="tensorrt")
    assert report.fusion is None and report.latency is None
    assert any("tensorrt cannot run here" in n for n in report.notes)
    assert any("no held-back samples" in n for n in report.notes)
    assert report.outputs[0].name == "y"


def test_sqnr() -> None:
    x = np.array([1.0, -2.0, 3.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x * 1.1) == pytest.approx(20.0)


def test_models_with_external_data(example_pair, tmp_path, monkeypatch) -> None:
    from onnxq import runtime
    from onnxq.ir.io import save_model

    float_model, quant_model, held = example_pair
    save_model(float_model, tmp_path / "f.onnx", external_data=True)
    save_model(quant_model, tmp_path / "q.onnx", external_data=True)
    # NOTE: from another working directory, with no weight read into the session's bytes: every
    # session (outputs, per-layer, fusion) reads the weights from the models' folder.
    monkeypatch.setattr(runtime, "INLINE_EXTERNAL_BYTES", 0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    report = self_check(load_model("../f.onnx"), load_model("../q.onnx"), [{"input": held}],
                        latency_budget_s=0.2)
    assert report.fusion is not None and report.fusion.kernels["QLinearConv"] == 3
    assert report.outputs[0].sqnr_db > 20 and report.layers
    assert not any("not measured" in n for n in report.notes), report.notes
