"""``onnxq check``: exit 0 clean, 1 on violations, 2 on user errors; --json details."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser

from onnxq.cli import main
from onnxq.examples import example_model_path
from tests.validation._graphs import RELU_ZP128


def test_clean_model_exits_0(capsys) -> None:
    assert main(["check", str(example_model_path())]) == 0
    assert "ok" in capsys.readouterr().out


def test_violations_exit_1_with_json_details(tmp_path: Path, capsys) -> None:
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model(RELU_ZP128.replace("float s = {0.02}", "float s = {0.0}")), path)
    assert main(["check", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["target"] == "ort-cpu"
    rules = {(f["rule"], f["node"]) for f in doc["findings"]}
    assert ("qdq-scale", "QuantizeLinear_0") in rules
    assert doc["violations"] == len([f for f in doc["findings"] if f["severity"] in ("error", "warning")])


def test_text_output_names_node_and_rule(tmp_path: Path, capsys) -> None:
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model(RELU_ZP128), path)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "Conv_3: stays float on ORT CPU (FusedConv)" in out and "[ort-cpu-unfused]" in out


def test_user_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and len(err.strip().splitlines()) == 1


def test_tensorrt_target_names_nodes_breaking_its_rules(tmp_path: Path, capsys) -> None:
    path = tmp_path / "u8.onnx"
    onnx.save(onnx.parser.parse_model(RELU_ZP128), path)
    assert main(["check", str(path), "--target", "tensorrt", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"] == "tensorrt" and doc["fusion"] is None
    hits = {(f["rule"], f["node"]) for f in doc["findings"]}
    # uint8 activations with zero point 128: TensorRT wants int8, zero point 0.
    assert any(rule == "tensorrt-zero-point" and node and "rq" in node for rule, node in hits), hits
    assert not any(rule.startswith("ort-cpu") for rule, _ in hits)
