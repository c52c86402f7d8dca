"""Mixed precision on zoo models, through the CLI as a user runs it (end to end, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import zoo
from onnxq.cli import main

pytestmark = pytest.mark.slow


def _files(name: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    zoo.ensure_built([name])
    calib = tmp_path / "calib.npz"
    np.savez(calib, **zoo.load_calib(name))  # type: ignore[arg-type]
    inputs, labels = zoo.load_eval(name)
    data = tmp_path / "eval.npz"
    np.savez(data, labels=labels, **inputs)  # type: ignore[arg-type]
    return zoo.model_path(name), calib, data


def test_uniform_int8_when_it_meets_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib, data = _files("digits_cnn", tmp_path)
    out = tmp_path / "mixed.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--data", str(data),
                 "--max-accuracy-drop", "0.01", "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    doc = json.loads(capsys.readouterr().out)["mixed"]
    assert doc["met"] and doc["float_nodes"] == [] and doc["sensitivity"] is None
    assert doc["metric"] == "top-1 accuracy against the labels"
    assert doc["uniform_drop"] <= 0.01
    assert zoo.evaluate("digits_cnn") - zoo.evaluate("digits_cnn", out) <= 0.01
