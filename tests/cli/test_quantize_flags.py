"""Each ``onnxq quantize`` flag the README documents changes what it says it changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str, name: str = "q.onnx") -> dict:
    out = tmp_path / name
    assert main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--no-guard", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _quantized_inputs(path: Path) -> dict[str, bool]:
    """Compute node name -> whether its first input comes from a DequantizeLinear."""
    model = ir.load(path)
    return {n.name: n.inputs[0] is not None and n.inputs[0].producer() is not None
            and n.inputs[0].producer().op_type == "DequantizeLinear"
            for n in model.graph if n.op_type in ("Conv", "Gemm")}


def test_include_and_exclude_select_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, capsys, "--include", "Gemm", name="inc.onnx")
    inc = _quantized_inputs(tmp_path / "inc.onnx")
    assert inc.pop("node_linear") is True and not any(inc.values()), inc
    _run(tmp_path, capsys, "--exclude", "Gemm", name="exc.onnx")
    exc = _quantized_inputs(tmp_path / "exc.onnx")
    assert exc.pop("node_linear") is False and all(exc.values()), exc


def test_no_optimize_skips_the_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx.parser

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
      c = Conv<pads = [1, 1, 1, 1]>(x, w)
      b = BatchNormalization(c, s, t, m, v)
      y = Relu(b)
    }""")
    for name, shape in (("w", (4, 3, 3, 3)), ("s", (4,)), ("t", (4,)), ("m", (4,))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "v"))
    onnx.save(proto, tmp_path / "bn.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (16, 1, 3, 8, 8)).astype(np.float32))
    docs = []
    for extra in ([], ["--no-optimize"]):
        out = tmp_path / f"q{len(extra)}.onnx"
        assert main(["quantize", str(tmp_path / "bn.onnx"), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
                     "--no-guard", "--json", "--no-self-check", *extra]) == 0
        docs.append((json.loads(capsys.readouterr().out), [n.op_type for n in onnx.load(out).graph.node]))
    (optimized, ops), (raw, raw_ops) = docs
    assert optimized["stats"]["fold-batchnorm.batchnorms_folded"] == 1 and "BatchNormalization" not in ops
    assert not any(k.startswith("fold-") for k in raw["stats"]) and "BatchNormalization" in raw_ops


def test_percentile_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, capsys, "--method", "percentile", "--percentile", "99.9", "--save-ranges",
         str(tmp_path / "r.json"), "--no-self-check")
    _run(tmp_path, capsys, "--method", "percentile", "--percentile", "90", "--save-ranges",
         str(tmp_path / "r90.json"), "--no-self-check", name="q90.onnx")
    wide, narrow = (json.loads((tmp_path / f).read_text()) for f in ("r.json", "r90.json"))
    assert wide["method"] == "percentile" and wide["details"]["percentile"] == 99.9
    # A lower percentile clips more: some range shrinks, none grows.
    spans = [(wide["tensors"][t][1] - wide["tensors"][t][0], narrow["tensors"][t][1] - narrow["tensors"][t][0])
             for t in wide["tensors"]]
    assert any(n < w for w, n in spans) and all(n <= w + 1e-6 for w, n in spans)


def test_per_tensor_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, capsys, "--per-tensor", "--no-self-check")
    model = onnx.load(tmp_path / "q.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    assert weight_dq and all(inits[n.input[1]].size == 1 for n in weight_dq)
    _run(tmp_path, capsys, "--no-self-check", name="pc.onnx")
    model = onnx.load(tmp_path / "pc.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert any(n.op_type == "DequantizeLinear" and inits.get(n.input[1], np.zeros(1)).size > 1
               for n in model.graph.node)


@pytest.mark.parametrize(("mode", "external"), [("yes", True), ("no", False)])
def test_external_data_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, external: bool) -> None:
    _run(tmp_path, capsys, "--external-data", mode, "--no-self-check")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert (len(files) > 1) is external, files
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)


def test_min_speedup_gate_passes_when_met(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--no-guard", "-q", "--min-speedup", "0.01"])
    assert code == 0 and out.exists()


def test_recovery_runs_the_named_passes_before_calibration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = _run(tmp_path, capsys, name="plain.onnx")
    rounded = _run(tmp_path, capsys, "--recovery", "adaround", name="ada.onnx")
    assert not any(k.startswith("adaround.") for k in plain["stats"])
    assert rounded["stats"]["adaround.layers_rounded"] >= 1
    # the example's logits: AdaRound's rounding is closer to FP32 than nearest rounding
    sqnr = [d["self_check"]["outputs"][0]["sqnr_db"] for d in (plain, rounded)]
    assert sqnr[1] > sqnr[0], sqnr
    # with the guard on, its rungs keep the chosen pass
    out = tmp_path / "guarded.onnx"
    assert main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--recovery", "adaround", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["adaround.layers_rounded"] >= 1
