"""End to end: `onnxq run -p cleanup` on a real, unoptimized PyTorch export keeps its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxq import runtime
from onnxq.cli import main
from onnxq.ir.io import load_model
from onnxq.ir.summary import summarize

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory) -> Path:
    """A 2-layer transformer encoder exported without the exporter's own optimizer."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    module = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    path = tmp_path_factory.mktemp("export") / "encoder_raw.onnx"
    program = torch.onnx.export(
        module, (torch.randn(2, 10, 32),), dynamo=True, optimize=False, opset_version=18,
        external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    program.save(str(path))
    return path


def test_cleanup_shrinks_the_export_and_keeps_outputs(raw_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.onnx"
    assert main(["run", str(raw_export), "-p", "cleanup", "-o", str(out), "--verify-each",
                 "--numeric-check-each"]) == 0
    before, after = summarize(load_model(raw_export)), summarize(load_model(out))
    assert after["nodes"] < 0.7 * before["nodes"]
    assert "Identity" not in after["ops"]
    assert after["inputs"] == before["inputs"] and after["outputs"] == before["outputs"]
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        feeds = {before["inputs"][0]["name"]: rng.standard_normal((batch, 10, 32)).astype(np.float32)}
        want, got = runtime.run(raw_export, feeds), runtime.run(out, feeds)
        assert not runtime.compare(want, got, rtol=1e-5, atol=1e-5)


def test_cleanup_output_is_deterministic(raw_export: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for out in outs:
        assert main(["run", str(raw_export), "-p", "cleanup", "-o", str(out), "-q"]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_opset_upgrade_of_real_export(raw_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o21.onnx"
    assert main(["run", str(raw_export), "-p", "cleanup,convert-opset{opset=21}", "-o", str(out),
                 "--numeric-check-each"]) == 0
    assert load_model(out).opset_imports[""] == 21
