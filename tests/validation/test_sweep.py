"""sweep(): strategies in parallel processes, cached results reused, a recommendation that passes the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.errors import OptionError, UserError
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.validation import sweep as sweep_mod
from onnxq.validation.sweep import StrategyRegistry, register_strategy, sweep

STRATEGIES = ["dynamic", "static-minmax", "static-minmax-per-tensor"]


def _run(out: Path, **kwargs):
    options = {"strategies": STRATEGIES, "latency_budget_s": 0.2, "max_accuracy_drop": 0.05} | kwargs
    return sweep(example_model_path(), str(example_inputs_path()), str(example_inputs_path()), out_dir=out,
                 **options)


def test_parallel_sweep_recommends_then_resumes_from_cache(tmp_path: Path) -> None:
    report = _run(tmp_path, jobs=2)
    doc = json.loads(json.dumps(report.to_json()))
    assert [s["name"] for s in doc["strategies"]] == STRATEGIES
    assert doc["accuracy_kind"] == "labels" and doc["reference_accuracy"] == 1.0
    for s in doc["strategies"]:
        assert s["error"] is None and not s["cached"]
        assert 0.9 <= s["accuracy"] <= 1.0 and s["p50_ms"] > 0 and s["speedup"] > 0
        assert s["size_bytes"] == (tmp_path / f"{s['name']}.onnx").stat().st_size
        assert (tmp_path / f"{s['name']}.json").is_file()
    [best] = [s for s in doc["strategies"] if s["recommended"]]
    assert best["name"] == doc["recommended"] and best["passes"] and best["accuracy_drop"] <= 0.05
    assert best["speedup"] == max(s["speedup"] for s in doc["strategies"] if s["passes"])
    assert doc["gate"] == {"passed": True, "line": report.gate_line()}
    assert any(s["pareto"] for s in doc["strategies"])
    # Static models are smaller than the dynamic one, which keeps float activations' scales in-graph.
    sizes = {s["name"]: s["size_bytes"] for s in doc["strategies"]}
    assert sizes["static-minmax"] < (example_model_path().stat().st_size)

    stamps = {n: (tmp_path / f"{n}.onnx").stat().st_mtime_ns for n in STRATEGIES}
    again = _run(tmp_path, jobs=2)
    assert all(s.cached for s in again.strategies)
    assert {n: (tmp_path / f"{n}.onnx").stat().st_mtime_ns for n in STRATEGIES} == stamps  # not re-quantized
    assert [(s.accuracy, s.p50_ms) for s in again.strategies] == [(s.accuracy, s.p50_ms) for s in report.strategies]
    assert again.recommended == report.recommended


def test_changed_options_are_not_served_from_cache(tmp_path: Path) -> None:
    first = _run(tmp_path, strategies=["static-minmax"])
    assert not first.strategies[0].cached
    with np.load(example_inputs_path()) as npz:
        np.save(tmp_path / "labels.npy", (npz["labels"] + 1) % 10)
    other = _run(tmp_path, strategies=["static-minmax"], labels=str(tmp_path / "labels.npy"), max_accuracy_drop=1.0)
    assert not other.strategies[0].cached and other.strategies[0].accuracy < 0.2
    assert _run(tmp_path, strategies=["static-minmax"], labels=str(tmp_path / "labels.npy"),
                max_accuracy_drop=1.0).strategies[0].cached


def _unchanged(model: ir.Model, calibration: object) -> ir.Model:
    return model


def _refuses(model: ir.Model, calibration: object) -> ir.Model:
    raise UserError("node_linear: cannot quantize this")


def test_registered_strategies_and_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_mod, "_DEFAULT", None)  # a fresh default registry for this test
    register_strategy("fp32-copy", _unchanged, summary="the float model as it is")
    register_strategy("refuses", _refuses)
    assert StrategyRegistry.default().names()[-2:] == ["fp32-copy", "refuses"]
    report = _run(tmp_path, strategies=["fp32-copy", "refuses"], jobs=1, max_accuracy_drop=0.0)
    copy, refused = report.strategies
    assert copy.accuracy_drop == 0.0 and copy.passes and copy.recommended
    assert refused.error == "node_linear: cannot quantize this" and not refused.passes
    assert not (tmp_path / "refuses.json").exists()  # failures are retried, not cached
    assert "refuses: failed: node_linear: cannot quantize this" in "\n".join(report.lines())


def test_bad_options() -> None:
    with pytest.raises(OptionError, match="unknown strategy 'nope'; choose from dynamic, static-minmax"):
        _run(Path("/nonexistent"), strategies=["nope"])
    with pytest.raises(OptionError, match="--jobs must be at least 1"):
        _run(Path("/nonexistent"), jobs=0)


def test_failing_gate_recommends_nothing(tmp_path: Path) -> None:
    report = _run(tmp_path, strategies=["static-minmax"], min_speedup=1000.0)
    assert report.recommended is None and not report.passed
    assert report.gate_line().startswith("FAIL: no strategy passes (accuracy drop <= 0.05, speedup >= 1000x)")


@pytest.mark.slow
def test_zoo_sweep_writes_a_report_with_a_recommendation(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # NOTE: models/ is scripts, not installed
    from models import zoo
    from onnxq.validation.report import sweep_document, write_report

    zoo.ensure_built(["resnet_digits"])
    path = zoo.model_path("resnet_digits")
    report = sweep(path, str(path.with_name("resnet_digits.calib.npz")),
                   str(path.with_name("resnet_digits.eval.npz")), out_dir=tmp_path / "out",
                   strategies=["dynamic", "static-minmax", "static-percentile"], jobs=2, latency_budget_s=0.5,
                   max_accuracy_drop=0.02)
    assert all(s.error is None for s in report.strategies)
    assert report.recommended is not None
    best = next(s for s in report.strategies if s.recommended)
    assert best.passes and best.accuracy_drop is not None and best.accuracy_drop <= 0.02
    text = write_report(sweep_document(report.to_json()), tmp_path / "sweep.html").read_text()
    assert 'src="data:image/png;base64,' in text and f"Recommended: {best.name}." in text


def test_mixed_precision_strategy_reads_the_budget(tmp_path: Path) -> None:
    report = _run(tmp_path, strategies=["mixed-precision"], max_accuracy_drop=0.02)
    [mixed] = report.strategies
    assert mixed.error is None and mixed.accuracy is not None and (tmp_path / "mixed-precision.onnx").is_file()
    assert _run(tmp_path, strategies=["mixed-precision"], max_accuracy_drop=0.02).strategies[0].cached
    # Another budget may give another model: not served from the cache.
    assert not _run(tmp_path, strategies=["mixed-precision"], max_accuracy_drop=0.03).strategies[0].cached
