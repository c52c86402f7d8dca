"""``onnxq compare`` and the quantize gate flags: JSON, reports, user metrics and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnxq
from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model, save_model

MODEL, DATA = str(example_model_path()), str(example_inputs_path())


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> str:
    model, _ = onnxq.quantize(load_model(example_model_path()), DATA, self_check=False)
    path = tmp_path_factory.mktemp("q") / "q.onnx"
    save_model(model, path)
    return str(path)


def test_compare_json_and_html_report(quantized: str, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.html"
    code = main(["compare", MODEL, quantized, "--data", DATA, "--json", "--report", str(report),
                 "--max-accuracy-drop", "0.05"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accuracy"]["kind"] == "labels" and doc["gate"]["passed"] and doc["report"] == str(report)
    assert doc["outputs"][0]["name"] == "logits" and doc["layers"]
    assert 'src="data:image/png;base64,' in report.read_text()


def test_gate_exit_codes(quantized: str, capsys) -> None:
    assert main(["compare", MODEL, quantized, "--data", DATA, "--max-accuracy-drop", "0.05"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASS: accuracy drop")
    # A negative budget cannot be met: the candidate would have to beat the reference.
    assert main(["compare", MODEL, quantized, "--data", DATA, "--max-accuracy-drop", "-0.5", "-q"]) == 1
    assert capsys.readouterr().out.strip().startswith("FAIL: accuracy drop")
    assert main(["compare", MODEL, quantized, "--data", DATA, "--max-size", "1kB", "-q"]) == 1
    assert "FAIL: size" in capsys.readouterr().out


def test_metric_and_labels_from_the_command_line(quantized: str, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "cli_metric_mod.py").write_text(
        "import numpy as np\n"
        "def top1(outputs, labels):\n"
        "    return float(np.mean(outputs[0].argmax(1) == labels))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compare", MODEL, quantized, "--data", DATA, "--metric", "cli_metric_mod:top1", "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc["kind"] == "metric" and acc["description"] == "metric top1" and acc["reference"] == 1.0
    with np.load(DATA) as npz:
        np.savez(tmp_path / "inputs.npz", input=npz["input"])
        np.save(tmp_path / "labels.npy", npz["labels"])
    assert main(["compare", MODEL, quantized, "--data", str(tmp_path / "inputs.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"]["kind"] == "top1-agreement"
    assert main(["compare", MODEL, quantized, "--data", str(tmp_path / "inputs.npz"), "--labels",
                 str(tmp_path / "labels.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"]["kind"] == "labels"


def test_user_errors_exit_2(quantized: str, tmp_path: Path, capsys) -> None:
    assert main(["compare", MODEL, str(tmp_path / "missing.onnx"), "--data", DATA]) == 2
    assert "CANDIDATE" in capsys.readouterr().err
    assert main(["compare", MODEL, quantized, "--data", DATA, "--metric", "no_such_module_x:f"]) == 2
    assert "cannot import no_such_module_x" in capsys.readouterr().err
    assert main(["compare", MODEL, quantized, "--data", DATA, "--report", str(tmp_path / "r.pdf")]) == 2
    assert "expected a .html or .md file" in capsys.readouterr().err


def test_quantize_gate_flags(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dq.onnx"
    common = ["quantize", MODEL, "-o", str(out), "--mode", "dynamic", "--calib", DATA, "--no-self-check"]
    assert main([*common, "--max-accuracy-drop", "0.05", "--max-size", "1MB", "-q"]) == 0
    assert capsys.readouterr().out.strip().startswith("PASS: accuracy drop")
    out.unlink()
    assert main([*common, "--max-size", "1kB", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["gate"]["gate"]["line"].startswith("FAIL: size") and out.is_file()  # still written
    assert main([*common[:-3], "--no-self-check", "--min-speedup", "1"]) == 2
    assert "need samples" in capsys.readouterr().err


def test_bench_markdown_report(quantized: str, tmp_path: Path, capsys) -> None:
    report = tmp_path / "bench.md"
    assert main(["bench", MODEL, quantized, "--runs", "5", "--warmup", "1", "--no-memory", "--report", str(report),
                 "--max-size", "1MB", "-q"]) == 0
    text = report.read_text()
    assert text.startswith("# onnxq bench\n") and "**PASS: " in text and "![p50 latency per model](bench-1.png)" in text
    assert (tmp_path / "bench-1.png").read_bytes()[:4] == b"\x89PNG"


def test_quantize_size_gate_after_the_mixed_precision_search(tmp_path: Path, capsys) -> None:
    # Static + --max-accuracy-drop runs the mixed-precision search; --max-size still gates the output.
    out = tmp_path / "mixed.onnx"
    code = main(["quantize", MODEL, "-o", str(out), "--calib", DATA, "--no-self-check", "--max-accuracy-drop", "0.05",
                 "--max-size", "1kB", "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert code == 1 and out.is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FAIL: size")
