"""``onnxq convert``: exit codes, --json on stdout only, the output written only at -o."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from onnxq import runtime  # noqa: E402
from onnxq.ir.io import load_model  # noqa: E402

Main = Callable[[Sequence[str]], int]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="tanh", name="y")(inputs))
    path = tmp_path_factory.mktemp("cli") / "model.keras"
    with contextlib.redirect_stdout(io.StringIO()):
        model.save(path)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_json_report_and_only_output_written(cli: Main, keras_file: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / keras_file.name
    src.write_bytes(keras_file.read_bytes())
    out = tmp_path / "model.onnx"
    code = cli(["convert", str(src), "-o", str(out), "--dynamic", "x=rows", "--optimize", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["output"] == str(out) and report["source_kind"] == "keras"
    assert report["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["rows", 6]}]
    assert report["optimized"] is True and report["max_abs_diff"]["y"] < 1e-4
    assert _files(tmp_path) == ["model.keras", "model.onnx"]
    model = load_model(out)
    assert runtime.run(model, {"x": np.zeros((3, 6), np.float32)})["y"].shape == (3, 2)


def test_human_summary(cli: Main, keras_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert cli(["convert", str(keras_file), "-o", str(out), "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert f"-> {out} (keras, opset 17)" in text
    assert "inputs:  x[batch,6] float32" in text and "max abs diff vs source: y=" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--opset", "19"], "opset 19 is too high"),
        (["--opset", "9"], "opset 9 is too low"),
        (["--dynamic", "x"], "expected INPUT=NAME"),
        (["--dynamic", "nope=batch"], "no input named 'nope'"),
        (["--dynamic", "x=a", "--dynamic", "x=b"], "already named 'a'"),
    ],
)
def test_user_errors_exit_2_and_write_nothing(
    cli: Main, keras_file: Path, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    out = tmp_path / "m.onnx"
    assert cli(["convert", str(keras_file), "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and _files(tmp_path) == []


@pytest.mark.parametrize("how", ["same", "hardlink", "inside"])
def test_output_over_the_source_is_refused(cli: Main, tmp_path: Path, capsys, how: str) -> None:
    if how == "inside":
        src = tmp_path / "saved_model"
        src.mkdir()
        (src / "saved_model.pb").write_bytes(b"x")
        out = src / "saved_model.pb"
    else:
        src = tmp_path / "model.tflite"
        src.write_bytes(b"x")
        out = src
        if how == "hardlink":
            out = tmp_path / "link.onnx"
            os.link(src, out)
    assert cli(["convert", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("inside the source folder" if how == "inside" else "-o is the source") in err
    assert out.read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("model.pt", "unsupported source '.pt'; expected a .pt2 file"),
        ("model.onnx", "it is already ONNX"),
        ("model.txt", "unsupported source '.txt'; expected a .pt2 file, a SavedModel folder"),
        ("missing.pt2", "missing.pt2: no such file or folder"),
        ("empty_dir", "a folder without saved_model.pb"),
        ("broken.keras", "broken.keras: cannot load as a Keras model"),
    ],
)
def test_bad_sources_exit_2(cli: Main, tmp_path: Path, capsys, name: str, message: str) -> None:
    src = tmp_path / name
    if name == "empty_dir":
        src.mkdir()
    elif not name.startswith("missing"):
        src.write_bytes(b"\x01\x02 not a model")
    out = tmp_path / "out.onnx"
    assert cli(["convert", str(src), "-o", str(out), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert not out.exists()
