"""End to end on zoo models quantized by onnxruntime.quantization (QDQ, u8s8, per-channel):
fusion report, removal of useless Q/DQ, self-check, check and bench on real exports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from onnxq import runtime
from onnxq.cli import main
from onnxq.ir.io import load_model
from onnxq.targets.ort_cpu import cpu_kind
from onnxq.validation.fusion import fusion_report, remove_unfused_qdq
from onnxq.validation.self_check import self_check

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402

pytestmark = pytest.mark.slow


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _data(name: str, split: str, count: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    model = load_model(zoo.model_path(name))
    with np.load(zoo.model_path(name).with_name(f"{name}.{split}.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return [runtime.select_inputs(model, {k: v[i * batch:(i + 1) * batch] for k, v in arrays.items()})
            for i in range(count)]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    zoo.ensure_built(["resnet_digits", "transformer_digits"])
    out = {}
    for name in ("resnet_digits", "transformer_digits"):
        path = tmp_path_factory.mktemp(name) / "q.onnx"
        quantize_static(str(zoo.model_path(name)), str(path), _Reader(_data(name, "calib", 16)),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=cpu_kind() == "avx2")  # NOTE: ORT's remedy for u8s8 saturation on AVX2
        out[name] = path
    return out


def test_resnet_fusion_names_batchnorms_left_in_float(quantized: dict[str, Path]) -> None:
    report = fusion_report(quantized["resnet_digits"])
    assert report.kernels["QLinearConv"] >= 9 and report.kernels["QLinearAdd"] == 3
    float_ops = {g.op_type for g in report.unfused}
    assert float_ops == {"BatchNormalization", "ReduceMean"}
    bn = next(g for g in report.unfused if g.op_type == "BatchNormalization")
    assert "fold it into the preceding Conv" in bn.reason
    # Every float group sits between fused Convs: its Q/DQ are theirs, nothing to remove.
    assert report.wasted == []


def test_remove_unfused_qdq_keeps_every_kernel_on_transformer(quantized: dict[str, Path]) -> None:
    model = load_model(quantized["transformer_digits"])
    feeds = _data("transformer_digits", "eval", 1, batch=64)[0]
    before = runtime.run(model, feeds)
    report = fusion_report(model)
    removed = remove_unfused_qdq(model, report)
    assert removed > 0
    after_report = fusion_report(model)
    assert after_report.kernels == report.kernels
    assert len(after_report.fused) == len(report.fused) and after_report.wasted == []
    after = runtime.run(model, feeds)
    [logits] = list(before)
    assert np.mean(before[logits].argmax(-1) == after[logits].argmax(-1)) >= 0.98


def test_self_check_and_check_on_resnet(quantized: dict[str, Path], capsys) -> None:
    name = "resnet_digits"
    report = self_check(load_model(zoo.model_path(name)), load_model(quantized[name]),
                        _data(name, "eval", 4, batch=32), latency_budget_s=1.0)
    [out] = report.outputs
    assert out.sqnr_db > 20 and out.top1_agreement is not None and out.top1_agreement >= 0.95
    assert report.layers and report.latency is not None
    assert main(["check", str(quantized[name]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {f["rule"] for f in doc["findings"]} == {"ort-cpu-float-op"}


def test_bench_float_against_quantized(quantized: dict[str, Path], capsys) -> None:
    name = "resnet_digits"
    code = main(["bench", str(zoo.model_path(name)), str(quantized[name]), "--runs", "20", "--warmup", "3",
                 "--json", "--max-size", "10MB"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    ref, cand = doc["models"]
    assert cand["size_ratio"] < 0.5  # int8 weights
    assert cand["latency"][0]["speedup"] > 0 and ref["peak_memory_bytes"] > 0
    assert doc["gate"]["passed"] is True
