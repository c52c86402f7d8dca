"""``onnxq export-ort``: the ORT format, loaded back and checked against the ONNX model."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import onnxq
from onnxq.cli import main
from onnxq.convert.ort_format import export_ort
from onnxq.examples import example_inputs_path, example_model_path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "digits_int8.onnx"
    with np.load(example_inputs_path()) as npz:
        feeds = [{"input": row[None]} for row in npz["input"][:64]]
    model, _ = onnxq.quantize(onnxq.load_model(example_model_path()), feeds, cpu="vnni", self_check=False)
    onnxq.save_model(model, out)
    return out


def _run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_float_model_to_ort_loads_and_matches(tmp_path: Path) -> None:
    source = example_model_path()
    before = _digest(source)
    out, config = tmp_path / "digits.ort", tmp_path / "digits.config"
    result = export_ort(source, out, reduced_ops_config=config)
    assert _digest(source) == before  # the input is never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.config", "digits.ort"]  # nothing else left
    assert out.read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    with np.load(example_inputs_path()) as npz:
        x = npz["input"][:4]
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(_run_ort(out, x), want, rtol=1e-5, atol=1e-5)
    assert result.max_abs_diff <= 1e-5 and result.platform == "arm" and result.style == "fixed"
    # the reduced-build config lists what the optimized model runs, and names the output, not a temp file
    text = config.read_text()
    assert "com.microsoft;1;FusedConv" in text and "Gemm" in text and ".onnxq-tmp" not in text
    assert result.operators["com.microsoft;1"] == ["FusedConv"]


def test_quantized_model_keeps_its_integer_kernels_in_ort_format(quantized: Path, tmp_path: Path) -> None:
    result = export_ort(quantized, tmp_path / "q.ort", style="runtime")
    ops = {op for names in result.operators.values() for op in names}
    assert {"QLinearConv", "QuantizeLinear"} <= ops, ops
    assert result.output.stat().st_size < example_model_path().stat().st_size  # int8 weights stay int8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.ort"]
    assert sorted(p.name for p in quantized.parent.iterdir()) == ["digits_int8.onnx"]  # nothing beside the input


@pytest.mark.skipif(sys.platform != "linux", reason="the byte-identical conversion relies on Linux personality()")
def test_the_same_model_gives_the_same_bytes(quantized: Path, tmp_path: Path) -> None:
    # onnxruntime's writer alone gives a different file on each run (hash-ordered tables)
    a, b = tmp_path / "a" / "m.ort", tmp_path / "b" / "m.ort"
    a.parent.mkdir(), b.parent.mkdir()
    export_ort(quantized, a)
    export_ort(quantized, b)
    assert a.read_bytes() == b.read_bytes()


def test_cli_json_and_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.ort"
    assert main(["export-ort", str(example_model_path()), "-o", str(out), "--platform", "amd64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["output"] == str(out) and doc["platform"] == "amd64" and doc["onnxruntime"] == ort.__version__
    for args, where in (([str(example_model_path()), "-o", str(tmp_path / "m.onnx")], "must end in .ort"),
                        ([str(tmp_path / "none.onnx"), "-o", str(out)], "no such file"),
                        ([str(example_model_path()), "-o", str(tmp_path / "nodir" / "m.ort")], "does not exist")):
        assert main(["export-ort", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and where in err[0], err


def test_a_model_onnxruntime_cannot_load_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # valid ONNX that onnxruntime's CPU EP has no kernel for (Mod on bfloat16)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (bfloat16[2] x) => (bfloat16[2] y) { y = Mod<fmod=1>(x, x) }""")
    onnx.checker.check_model(proto, full_check=True)
    model = tmp_path / "custom.onnx"
    onnx.save(proto, model)
    assert main(["export-ort", str(model), "-o", str(tmp_path / "c.ort")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot convert it to ORT format" in err[0] and "Mod" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]
