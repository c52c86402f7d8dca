"""Reports: self-contained HTML with embedded PNG plots, Markdown with PNGs beside, Pareto frontier."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

import pytest

import onnxq
from onnxq.errors import OptionError
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model, save_model
from onnxq.validation.bench import bench, gate
from onnxq.validation.compare import accuracy_gate, compare
from onnxq.validation.report import (
    Document,
    Section,
    Table,
    bench_document,
    check_report_path,
    compare_document,
    pareto_front,
    render_html,
    sweep_document,
    write_report,
)

_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    model, _ = onnxq.quantize(load_model(example_model_path()), str(example_inputs_path()), self_check=False)
    path = tmp_path_factory.mktemp("q") / "q.onnx"
    save_model(model, path)
    report = compare(example_model_path(), path, example_inputs_path())
    return report, accuracy_gate(report.accuracy, max_accuracy_drop=0.01)


def test_html_report_is_self_contained(compared, tmp_path: Path) -> None:
    report, verdict = compared
    path = write_report(compare_document(report, verdict), tmp_path / "r.html")
    text = path.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    [image] = _IMG.findall(text)
    width, height = _png_size(base64.b64decode(image))
    assert width > 100 and height > 100
    assert '<p class="pass">PASS: accuracy drop' in text
    assert "node_relu_2" in text and "top-1 accuracy of &#x27;logits&#x27; against 32 labels" in text


def test_markdown_report_writes_plots_beside(compared, tmp_path: Path) -> None:
    report, verdict = compared
    path = write_report(compare_document(report, verdict), tmp_path / "r.md")
    text = path.read_text()
    assert text.startswith("# onnxq compare: q.onnx vs digits_cnn.onnx\n")
    assert "![per-layer SQNR in graph order](r-1.png)" in text
    assert _png_size((tmp_path / "r-1.png").read_bytes())[0] > 100
    assert "| node | tensor | SQNR dB | graph position |" in text


def test_reports_are_deterministic(compared, tmp_path: Path) -> None:
    report, verdict = compared
    first = write_report(compare_document(report, verdict), tmp_path / "a.html").read_bytes()
    assert write_report(compare_document(report, verdict), tmp_path / "b.html").read_bytes() == first


def test_bench_report(tmp_path: Path) -> None:
    result = bench([example_model_path(), example_model_path()], runs=3, warmup=1, memory=False)
    doc = bench_document(result, gate(result, max_size=10**6))
    text = write_report(doc, tmp_path / "b.html").read_text()
    assert len(_IMG.findall(text)) == 1 and "p50 ms" in text and "PASS: " in text


def test_sweep_report_marks_the_recommendation(tmp_path: Path) -> None:
    rows = [
        {"name": n, "accuracy": a, "accuracy_drop": 0.99 - a, "p50_ms": 1 / s, "speedup": s, "size_bytes": 1000,
         "passes": a >= 0.98, "pareto": p, "recommended": n == "b", "error": None, "cached": False}
        for n, a, s, p in (("a", 0.99, 1.5, True), ("b", 0.985, 2.0, True), ("c", 0.9, 2.5, True),
                           ("d", 0.95, 1.2, False))
    ]
    doc = {"model": "m.onnx", "strategies": rows, "accuracy_kind": "labels", "accuracy_description": "top-1",
           "reference_accuracy": 0.99, "reference_p50_ms": 1.0, "acceptance": "accuracy drop <= 0.01",
           "min_accuracy": 0.98, "min_speedup": None, "recommended": "b",
           "gate": {"passed": True, "line": "PASS: b"}}
    text = write_report(sweep_document(doc), tmp_path / "s.html").read_text()
    assert len(_IMG.findall(text)) == 1 and "Recommended: b." in text and '<p class="pass">PASS: b</p>' in text


def test_pareto_front() -> None:
    points = [(1.5, 0.99), (2.0, 0.985), (2.5, 0.9), (1.2, 0.95), (2.0, 0.98)]
    assert pareto_front(points) == [0, 1, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points do not dominate each other


def test_report_paths_are_checked(tmp_path: Path) -> None:
    assert check_report_path(tmp_path / "r.HTML") == "html"
    with pytest.raises(OptionError, match="expected a .html or .md file"):
        check_report_path(tmp_path / "r.pdf")
    with pytest.raises(OptionError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "r.html")


def test_html_escapes_text() -> None:
    doc = Document("<t>", [Section("s", text=["a & b"], tables=[Table(["<h>"], [["<script>"]])])], "FAIL: x<y", False)
    text = render_html(doc)
    assert "<script>" not in text and "&lt;script&gt;" in text and '<p class="fail">FAIL: x&lt;y</p>' in text
