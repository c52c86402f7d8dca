"""``onnxq optimize``: the preset of run (same flags), --target, --explain, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq import runtime
from onnxq.cli import main
from onnxq.ir.io import load_model

# A Conv whose output also feeds a Relu (BatchNorm cannot fold: 2 consumers), and a decomposed GELU.
MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y, float[1, 2, 4, 4] r, float[1, 2, 4, 4] z)
  <float[2, 2, 1, 1] w = {1.0, 0.5, -0.5, 2.0}, float[2] s = {1.5, 0.5}, float[2] b = {0.1, 0.2},
   float[2] m = {0.5, -0.5}, float[2] v = {1.0, 2.0}, float sq = {1.4142135}, float one = {1.0},
   float half = {0.5}> {
  c = Conv(x, w)
  y = BatchNormalization(c, s, b, m, v)
  r = Relu(c)
  d = Div(x, sq)
  e = Erf(d)
  a = Add(e, one)
  mm = Mul(x, a)
  z = Mul(mm, half)
}
"""


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(MODEL), path)
    return path


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in load_model(path).graph]


def test_optimize_json_with_run_flags(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    code = main(["optimize", str(model_path), "-o", str(out), "--json", "--verify-each", "--numeric-check-each",
                 "--timing"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == "optimize" and report["modified"] is True
    assert report["stats"]["fuse-gelu.gelus_fused"] == 1
    assert report["stats"]["fold-batchnorm.batchnorms_decomposed"] == 1
    assert report["numeric_check"]["ok"] is True and "fuse-gelu" in report["timing"]
    assert "Gelu" in _ops(out) and "Erf" not in _ops(out)
    feeds = runtime.random_inputs(load_model(model_path))
    assert not runtime.compare(runtime.run(load_model(model_path), feeds), runtime.run(load_model(out), feeds))
    assert load_model(out).metadata_props["onnxq.pipeline"] == "optimize"


def test_optimize_is_deterministic(model_path: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "1.onnx", tmp_path / "2.onnx"
    assert main(["optimize", str(model_path), "-o", str(one), "-q"]) == 0
    assert main(["optimize", str(model_path), "-o", str(two), "-q"]) == 0
    assert one.read_bytes() == two.read_bytes()


def test_explain_names_the_reason(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    code = main(["optimize", str(model_path), "-o", str(out), "--explain", "fold-batchnorm",
                 "--target", "tensorrt"])
    assert code == 0
    text = capsys.readouterr().out
    # NOTE: the BatchNorm was decomposed into Mul+Add (its Conv has a second consumer), so
    # fold-batchnorm's only remark on the result is that no BatchNormalization is left.
    assert "near misses:\n  fold-batchnorm: model: no BatchNormalization node" in text, text
    code = main(["optimize", str(model_path), "-o", str(out), "--json", "--explain", "all"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    reasons = {(row["pass"], row["reason"]) for row in report["explain"]}
    assert ("fold-mul-into-weights", "Conv output 'c' has 2 consumers") in reasons, reasons


def test_explain_batchnorm_with_decompose_off(model_path: Path, tmp_path: Path, capsys) -> None:
    # `onnxq run` with the fold alone keeps the BatchNorm, and --explain on optimize is about
    # the output model; the library call gives the reason on the input directly.
    from onnxq.passes.fusion import FoldBatchNorm
    from tests.conftest import parse

    misses = FoldBatchNorm(decompose=False).explain(parse(MODEL))
    assert "fold-batchnorm: BatchNormalization_1: Conv output 'c' has 2 consumers" in [str(m) for m in misses]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--explain", "fold-batchnrom"], "no fusion pass 'fold-batchnrom'"),
        (["--explain", "fold-batchnorm:nope"], "pass 'fold-batchnorm' has no such rule"),
    ],
)
def test_user_errors(model_path: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    code = main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_target_exits_2(model_path: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--target", "tpu"])
    assert exit_info.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def test_gelu_target_choice(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model_path), "-o", str(out), "--target", "tensorrt", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "fuse-gelu{target=tensorrt}" in report["pipeline"]
    assert "Erf" in _ops(out)  # opset 18: TensorRT has no contrib Gelu, so the GELU stays decomposed
    assert not np.isnan(runtime.run(load_model(out), runtime.random_inputs(load_model(out)))["z"]).any()
