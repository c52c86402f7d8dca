"""What needs no framework: missing extras, source detection, the numeric check, stdout hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

import onnxq.cli.convert
from onnxq.convert import convert, detect_source_kind, from_keras, from_pt2, from_tflite, from_torch
from onnxq.convert.common import compare_with_source, finish, import_extra
from onnxq.errors import ConversionError, MissingExtraError, ModelLoadError, UserError

ADD_ONE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[s1, 2] x) => (float[s1, 2] y) {
  one = Constant<value_float = 1.0>()
  y = Add(x, one)
}
"""


def _model() -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(ADD_ONE))


@pytest.mark.parametrize("module", ["torch", "tensorflow", "tf2onnx"])
def test_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # NOTE: makes 'import module' fail like an absent package
    extra = "torch" if module == "torch" else "tf"
    with pytest.raises(MissingExtraError, match=rf"not installed; pip install 'onnxq\[{extra}\]'$") as info:
        import_extra(module, purpose="m.x: converting")
    assert isinstance(info.value, UserError) and info.value.exit_code == 2


def test_missing_torch_for_pt2_and_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "m.pt2"
    src.write_bytes(b"zip")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(
        MissingExtraError, match=r"m.pt2: converting a .pt2 file needs PyTorch, which is not installed"
    ):
        from_pt2(src)
    with pytest.raises(MissingExtraError, match=r"onnxq\[torch\]"):
        from_torch(object(), ())


@pytest.mark.parametrize("module", ["tensorflow", "tf2onnx"])
def test_missing_tensorflow_for_tf_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    for name, fn in [("m.keras", from_keras), ("m.tflite", from_tflite)]:
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(MissingExtraError, match=rf"{name}: .*pip install 'onnxq\[tf\]'"):
            fn(tmp_path / name)


def test_missing_extra_via_cli_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    (tmp_path / "m.tflite").write_bytes(b"x")
    assert cli(["convert", str(tmp_path / "m.tflite"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxq: error: ") and "pip install 'onnxq[tf]'" in err and err.count("\n") == 1


def test_broken_install_is_not_reported_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str, *args: object, **kwargs: object) -> None:
        raise ImportError("libfoo.so: cannot open shared object file")

    monkeypatch.setattr("importlib.import_module", fail)
    with pytest.raises(ConversionError, match="importing PyTorch failed: libfoo.so"):
        import_extra("torch", purpose="m")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.pt2", "pt2"), ("a.keras", "keras"), ("a.h5", "h5"), ("a.HDF5", "h5"), ("a.tflite", "tflite")],
)
def test_detect_source_kind(tmp_path: Path, name: str, kind: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert detect_source_kind(tmp_path / name) == kind


def test_detect_saved_model_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert detect_source_kind(tmp_path / "sm") == "saved_model"
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        convert(tmp_path / "nothing.pt2")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(
        ConversionError,
        match=r"w.pth: unsupported source '.pth'; expected .*; a .pt/.pth file holds weights.*torch.export.save",
    ):
        convert(tmp_path / "w.pth")


def test_numeric_mismatch_is_a_conversion_error() -> None:
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    assert compare_with_source(
        _model(), {"x": x}, [x + 1], where="m", rtol=1e-4, atol=1e-5, reference="Ref"
    ) == {"y": 0.0}
    with pytest.raises(
        ConversionError, match=r"m: the converted model computes something else than Ref: .*'y'"
    ):
        compare_with_source(_model(), {"x": x}, [x + 1.01], where="m", rtol=1e-4, atol=1e-5, reference="Ref")
    with pytest.raises(ConversionError, match="has 1 outputs, Ref returned 2"):
        compare_with_source(_model(), {"x": x}, [x, x], where="m", rtol=1e-4, atol=1e-5, reference="Ref")


def test_finish_tolerance_is_a_parameter() -> None:
    x = np.ones((2, 2), np.float32)
    result = finish(
        _model(),
        source_kind="test",
        source="m",
        feeds={"x": x},
        expected={"y": x + 1.001},
        layout="nchw",
        anonymous=r"s\d+",
        rtol=0,
        atol=1e-2,
    )
    assert result.input_shapes == [["batch", 2]] and result.renamed_dims == {"s1": "batch"}
    assert result.max_abs_diff["y"] == pytest.approx(1e-3, rel=1e-2)
    assert result.to_json()["tolerance"] == {"rtol": 0, "atol": 1e-2}
    with pytest.raises(ConversionError, match="computes something else"):
        finish(
            _model(),
            source_kind="test",
            source="m",
            feeds={"x": x},
            expected={"y": x + 1.001},
            layout="nchw",
            anonymous=r"s\d+",
            rtol=0,
            atol=1e-4,
        )


def test_json_stdout_survives_converters_that_print(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli, capfd
) -> None:
    def noisy_convert(path: object, **kwargs: object) -> object:
        print("python-level chatter")
        os.write(1, b"C-level chatter\n")
        x = np.ones((2, 2), np.float32)
        return finish(
            _model(),
            source_kind="test",
            source=str(path),
            feeds={"x": x},
            expected=[x + 1],
            layout="nchw",
            anonymous=r"s\d+",
        )

    monkeypatch.setattr(onnxq.cli.convert, "convert", noisy_convert)
    src = tmp_path / "m.tflite"
    src.write_bytes(b"x")
    assert cli(["convert", str(src), "-o", str(tmp_path / "m.onnx"), "--json"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["inputs"][0]["shape"] == ["batch", 2]
    assert "python-level chatter" in captured.err and "C-level chatter" in captured.err


def test_public_api_surface() -> None:
    import onnxq.convert

    assert set(onnxq.convert.__all__) == {
        "DEFAULT_ATOL",
        "DEFAULT_OPSET",
        "DEFAULT_RTOL",
        "SOURCE_KINDS",
        "ConversionResult",
        "DimRequest",
        "convert",
        "detect_source_kind",
        "from_keras",
        "from_pt2",
        "from_saved_model",
        "from_tflite",
        "from_torch",
        "parse_requests",
    }


def test_importing_onnxq_convert_imports_no_framework() -> None:
    code = "import sys, onnxq.convert; print(sorted({'torch', 'tensorflow', 'tf2onnx'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_outputs_of_an_integer_source_may_differ_by_a_few_quantization_steps() -> None:
    model = ir.from_proto(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x, int8[4] q) => (float[4] y, int8[4] p) {
      y = Identity(x)
      p = Identity(q)
    }"""))
    x = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    q = np.array([-128, 0, 5, 127], np.int8)
    feeds = {"x": x, "q": q}
    step = 1.0 / 256
    off = {"y": x + 2 * step, "p": q}
    kwargs = {"where": "m.tflite", "rtol": 1e-4, "atol": 1e-5, "reference": "the TFLite interpreter"}
    with pytest.raises(ConversionError, match="output 'y'"):
        compare_with_source(model, feeds, off, **kwargs)  # float tolerance: two steps are too much
    assert compare_with_source(model, feeds, off, steps={"y": step}, **kwargs)["y"] == pytest.approx(2 * step)
    with pytest.raises(ConversionError, match=r"more than 3 quantization steps of 0\.00390625"):
        compare_with_source(model, feeds, {"y": x + 4 * step, "p": q}, steps={"y": step}, **kwargs)
    shifted = {"y": x, "p": (q.astype(np.int16) - 2).clip(-128, 127).astype(np.int8)}
    with pytest.raises(ConversionError, match="output 'p'"):
        compare_with_source(model, feeds, shifted, **kwargs)
    assert compare_with_source(model, feeds, shifted, steps={"p": 1.0}, **kwargs)["p"] == 2.0
    with pytest.raises(ConversionError, match="output 'p'"):
        compare_with_source(model, feeds, {"y": x, "p": q.astype(np.int16)}, steps={"p": 1.0}, **kwargs)
