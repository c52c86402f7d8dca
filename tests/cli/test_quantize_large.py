"""The README's large-model promises, with the limits lowered so a small model crosses them.

Above ``SELF_CHECK_MAX_BYTES`` (1 GiB) of weights, ``quantize`` keeps the weights lazy and skips
the self-check, and says so; above ``PROTOBUF_LIMIT_BYTES`` (2 GB), ``--external-data auto``
writes the weights beside the model.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq.ir.io as ir_io
from onnxq import runtime
from onnxq.cli import main

#: The module, not the function ``onnxq.quantization.quantize`` that the package exports.
quantize_module = importlib.import_module("onnxq.quantization.quantize")


def _write_big(path: Path) -> None:
    """A MatMul/Gemm stack with external weights (tools/bench_large_model.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    try:
        import bench_large_model
    finally:
        sys.path.pop(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    bench_large_model.generate(path, 128, 3, seed=0)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_above_the_limits_self_check_is_skipped_and_weights_go_beside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    src = tmp_path / "in" / "big.onnx"
    _write_big(src)
    monkeypatch.setattr(quantize_module, "SELF_CHECK_MAX_BYTES", 1024)
    monkeypatch.setattr(ir_io, "PROTOBUF_LIMIT_BYTES", 1024)
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    extra = [] if mode == "dynamic" else ["--calib", str(tmp_path / "calib.npz")]
    if mode == "static":
        name = onnx.load(src, load_external_data=False).graph.input[0].name
        np.savez(tmp_path / "calib.npz", **{name: np.random.default_rng(0).normal(0, 1, (8, 1, 128)).astype(np.float32)})
    assert main(["quantize", str(src), "-o", str(out), "--mode", mode, "--json", *extra]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["self_check"] is None
    assert any("self-check skipped" in d and "GiB of weights" in d for d in doc["diagnostics"]), doc["diagnostics"]
    saved = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]
    feeds = runtime.random_inputs(onnxq_load(src), seed=0)
    want, got = runtime.run(src, feeds), runtime.run(out, feeds)
    for name, value in want.items():
        assert got[name].shape == value.shape
        assert np.corrcoef(got[name].ravel(), value.ravel())[0, 1] > 0.99


def onnxq_load(path: Path):  # type: ignore[no-untyped-def]
    from onnxq.ir.io import load_model

    return load_model(path)
