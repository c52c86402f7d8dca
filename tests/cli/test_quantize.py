"""``onnxq quantize``: valid, fused, accurate INT8 from default options; safe files; clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path

#: The README's budget: one point of held-out accuracy (measured: no drop on AVX2, 0.2 points
#: gained with the VNNI profile emulated on AVX2; 4 images of 418).
MAX_DROP = 0.01


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _held_out() -> tuple[np.ndarray, np.ndarray]:
    """The example model's test split without the 32 calibration images the example ships (418 images)."""
    import sys

    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))  # NOTE: models/ is a folder of scripts, not installed
    from models import zoo

    zoo.ensure_built(["digits_cnn"])
    inputs, labels = zoo.load_eval("digits_cnn")
    with np.load(example_inputs_path()) as shipped:
        calibration = len(shipped["labels"])
        assert np.array_equal(inputs["input"][:calibration], shipped["input"]), "the example's samples moved"
    return inputs["input"][calibration:], labels[calibration:]


def _accuracy(path: Path) -> float:
    x, labels = _held_out()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == labels))


def _optimized_ops(path: Path, tmp: Path) -> dict[str, int]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(tmp / "optimized.onnx").graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_default_quantize_is_valid_fused_and_accurate(tmp_path: Path, capsys) -> None:
    model = example_model_path()
    before = _digest(model)
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(example_inputs_path()), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert _digest(model) == before, "the input must never change"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"], "nothing besides the output"
    onnx.checker.check_model(str(out), full_check=True)
    assert _accuracy(model) - _accuracy(out) <= MAX_DROP
    ops = _optimized_ops(out, tmp_path)
    # Every Conv and the Gemm run on integer kernels; no Q/DQ is left between them.
    assert ops.get("QLinearConv", 0) == 3, ops
    assert ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) == 1, ops
    assert "Conv" not in ops and "FusedConv" not in ops, ops
    assert report["target"] == "ort-cpu" and report["mode"] == "static"
    assert report["self_check"] is not None
    assert report["size_bytes"]["output"] < report["size_bytes"]["input"]


def test_deterministic_and_ranges_round_trip(tmp_path: Path) -> None:
    args = [str(example_model_path()), "--calib", str(example_inputs_path()), "-q"]
    assert main(["quantize", *args, "-o", str(tmp_path / "a.onnx"), "--save-ranges", str(tmp_path / "r.json")]) == 0
    assert main(["quantize", *args, "-o", str(tmp_path / "b.onnx")]) == 0
    assert _digest(tmp_path / "a.onnx") == _digest(tmp_path / "b.onnx")
    ranges = json.loads((tmp_path / "r.json").read_text())
    assert ranges["tensors"] and ranges["fingerprint"]
    # Reusing the ranges skips calibration and gives the same model.
    assert main(["quantize", str(example_model_path()), "--ranges", str(tmp_path / "r.json"), "-q",
                 "--no-self-check", "-o", str(tmp_path / "c.onnx")]) == 0
    assert _digest(tmp_path / "c.onnx") == _digest(tmp_path / "a.onnx")


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse", "moving-average"])
def test_every_method_stays_accurate(method: str, tmp_path: Path) -> None:
    out = tmp_path / f"{method}.onnx"
    assert main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--method", method, "-q", "--no-self-check"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert _accuracy(example_model_path()) - _accuracy(out) <= MAX_DROP


def test_dynamic_mode_needs_no_calibration(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dyn.onnx"
    assert main(["quantize", str(example_model_path()), "-o", str(out), "--mode", "dynamic", "--json"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert _accuracy(example_model_path()) - _accuracy(out) <= MAX_DROP
    # The example is a CNN whose only dynamic candidate is its final Gemm.
    report = json.loads(capsys.readouterr().out)
    assert report["stats"].get("quantize-dynamic.quantized_gemm") == 1
    assert not any("quantized nothing" in d for d in report["diagnostics"])


def test_dynamic_mode_says_when_it_quantized_nothing(tmp_path: Path, capsys) -> None:
    import onnx.parser
    from onnx import numpy_helper

    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) { y = Conv<pads = [1, 1, 1, 1]>(x, w) }
    """)
    proto.graph.initializer.append(numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"))
    onnx.save(proto, tmp_path / "conv.onnx")
    assert main(["quantize", str(tmp_path / "conv.onnx"), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic",
                 "--json", "--no-self-check"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any("dynamic mode quantized nothing" in d and "static mode" in d for d in report["diagnostics"])


def test_tensorrt_target_gives_symmetric_int8(tmp_path: Path) -> None:
    out = tmp_path / "trt.onnx"
    assert main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--target", "tensorrt", "-q", "--no-self-check"]) == 0
    model = onnx.load(out)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points), zero_points
    from onnxq.ir.io import load_model
    from onnxq.targets.tensorrt_rules import check_tensorrt

    assert check_tensorrt(load_model(out)) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs --calib"),
        (["--calib", "{tmp}/missing"], "no such file"),
        (["--calib", "{tmp}/bad.npz"], "'nope'"),
        (["--calib", "{tmp}/nan.npz"], "NaN"),
        (["--calib", "{example}", "--method", "kl"], "invalid choice"),
        (["--ranges", "{tmp}/other.json"], "another model"),
        (["--calib", "{example}", "--recovery", "adaround", "--max-accuracy-drop", "0.01"], "does not combine"),
        (["--calib", "{example}", "--recovery", "rounding"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_exit_2(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "bad.npz", nope=np.zeros((2, 1, 8, 8), np.float32))
    np.savez(tmp_path / "nan.npz", input=np.full((2, 1, 8, 8), np.nan, np.float32))
    (tmp_path / "other.json").write_text(json.dumps(
        {"format": "onnxq.ranges/1", "fingerprint": "0" * 16, "tensors": {"input": [0, 1]}}))
    extra = [e.format(tmp=tmp_path, example=example_inputs_path()) for e in extra]
    out = tmp_path / "o.onnx"
    try:
        code = main(["quantize", str(example_model_path()), "-o", str(out), *extra])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_static_mode_shrinks_embeddings_and_quantizes_lstm() -> None:
    import onnx.parser
    from onnx import numpy_helper

    import onnxq

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[1, 12] ids) => (float[1, 4] y) {
      e = Gather(table, ids)
      s = Transpose<perm = [1, 0, 2]>(e)
      h, hn, cn = LSTM<hidden_size = 8>(s, wx, wr)
      last = Squeeze(hn)
      y = MatMul(last, w)
    }
    """)
    proto.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((1, 32, 16)).astype(np.float32) * 0.3, "wx"),
        numpy_helper.from_array(rng.standard_normal((1, 32, 8)).astype(np.float32) * 0.3, "wr"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"),
    ])
    feeds = [{"ids": rng.integers(0, 64, (1, 12)).astype(np.int64)} for _ in range(16)]
    model, _ = onnxq.quantize(ir.from_proto(proto), calibration=feeds)
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    ops = {n.op_type for n in out.graph.node}
    tables = [i for i in out.graph.initializer if tuple(i.dims) == (64, 16)]
    assert tables and all(t.data_type == onnx.TensorProto.INT8 for t in tables), "embedding table left float"
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops, ops
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds[:4]:
        want = ref.run(None, feed)[0]
        assert np.abs(got.run(None, feed)[0] - want).max() <= 0.05 * np.abs(want).max() + 1e-3


def test_static_mode_keeps_a_table_smaller_than_what_a_run_gathers_float() -> None:
    # NOTE: Magika's 258 x 64 table read 2048 times per file: an INT8 table saves 50 KB once and
    # costs a DequantizeLinear of 2048 x 64 values on every run
    import onnx.parser
    from onnx import numpy_helper

    import onnxq

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[1, 200] ids) => (float[1, 200, 4] y) {
      e = Gather(table, ids)
      y = MatMul(e, w)
    }
    """)
    proto.graph.node[0].name = "lookup"
    proto.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w"),
    ])
    feeds = [{"ids": rng.integers(0, 64, (1, 200)).astype(np.int64)} for _ in range(8)]
    model, _ = onnxq.quantize(ir.from_proto(proto), calibration=feeds)
    out = ir.to_proto(model)
    table = next(i for i in out.graph.initializer if i.name == "table")
    assert table.data_type == onnx.TensorProto.FLOAT
    gather = next(n for n in out.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "table"


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_external_data_model_from_another_working_directory(mode: str, tmp_path: Path, monkeypatch) -> None:
    import onnx.parser
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x) => (float[N, 64] y) { h = MatMul(x, w1)  r = Relu(h)  y = MatMul(r, w2) }
    """)
    proto.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) * 0.1, "w1"),
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) * 0.1, "w2"),
    ])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(proto, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 1, 64)).astype(np.float32))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative external-data paths must resolve against the model's folder
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    assert main(["quantize", str(folder / "m.onnx"), "-o", str(out), "--mode", mode,
                 "--calib", str(folder / "calib.npz"), "-q"]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert list(elsewhere.iterdir()) == []
