"""A model that is already quantized: integer kernels are refused, carried QDQ scales are kept."""

from __future__ import annotations

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
