"""The optimize preset on a raw PyTorch export (from_torch(optimize=False)): BatchNorm, LayerNorm, GELU fused."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxq import runtime  # noqa: E402
from onnxq.cli import main  # noqa: E402
from onnxq.convert import from_torch  # noqa: E402
from onnxq.framework.context import PassContext  # noqa: E402
from onnxq.framework.instrumentation import verify  # noqa: E402
from onnxq.framework.pipeline import apply  # noqa: E402
from onnxq.ir.io import load_model, save_model  # noqa: E402
from onnxq.passes.fusion import optimize_pipeline  # noqa: E402
from tests.passes.fusion._helpers import ops  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):  # type: ignore[no-untyped-def]
        y = torch.relu(self.bn(self.conv(x)))
        y = y.mean(dim=(2, 3))
        return torch.nn.functional.gelu(self.fc(self.norm(y)))


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    module = Block()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-1, 1)
        module.bn.running_var.uniform_(0.5, 2)
    return module.eval()


@pytest.mark.slow
def test_raw_export_keeps_batchnorm_and_optimize_fuses_it() -> None:
    x = torch.randn(2, 3, 8, 8)
    raw = from_torch(_module(), (x,), optimize=False)
    assert "BatchNormalization" in ops(raw.model)
    assert any("raw export" in note for note in raw.notes)
    model = raw.model
    feeds = {model.graph.inputs[0].name: x.numpy()}
    before = runtime.run(model, feeds)
    counts_before = collections.Counter(ops(model))
    result = apply(model, optimize_pipeline(), PassContext())
    verify(model)
    after = runtime.run(model, feeds)
    assert not runtime.compare(before, after, rtol=1e-4, atol=1e-5)
    assert "BatchNormalization" not in ops(model)
    assert result.stats.get("fold-batchnorm.batchnorms_folded") == 1
    assert sum(collections.Counter(ops(model)).values()) < sum(counts_before.values())


@pytest.mark.slow
def test_cli_convert_no_optimize_then_optimize(tmp_path: Path) -> None:
    src = tmp_path / "block.pt2"
    x = torch.randn(2, 3, 8, 8)
    torch.export.save(torch.export.export(_module(), (x,)), src)
    raw, out = tmp_path / "raw.onnx", tmp_path / "opt.onnx"
    assert main(["convert", str(src), "-o", str(raw), "--no-optimize", "-q"]) == 0
    assert "BatchNormalization" in ops(load_model(raw))
    assert main(["optimize", str(raw), "-o", str(out), "--verify-each", "--numeric-check-each", "-q"]) == 0
    optimized = load_model(out)
    assert "BatchNormalization" not in ops(optimized)
    feeds = {optimized.graph.inputs[0].name: x.numpy()}
    np.testing.assert_allclose(runtime.run(load_model(raw), feeds)[optimized.graph.outputs[0].name],
                               runtime.run(optimized, feeds)[optimized.graph.outputs[0].name], rtol=1e-4, atol=1e-5)
    save_model(optimized, tmp_path / "again.onnx")
