"""Mixed precision to an accuracy budget: measured sensitivity, the search, overrides, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.calibration import CalibrationData, calibrate
from onnxq.cli import main
from onnxq.passes.quantization import tensors_to_calibrate
from onnxq.quantization.mixed_precision import (
    OverridesError,
    load_overrides,
    quantize_mixed,
    save_overrides,
)
from onnxq.quantization.sensitivity import Evaluator, Variants, analyze
from onnxq.targets import get_target
from tests.quantization import _fragile

HERE = Path(__file__).resolve().parent


def _feeds(count: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    x = _fragile.samples(count, seed)["x"]
    return [{"x": x[i]} for i in range(count)]


def _agreement(reference: onnx.ModelProto | Path, candidate: onnx.ModelProto | Path, seed: int = 7) -> float:
    """Top-1 agreement of two models on fresh inputs, both run in onnxruntime."""
    x = np.random.default_rng(seed).normal(0, 1, (256, 16)).astype(np.float32)

    def run(m: onnx.ModelProto | Path) -> np.ndarray:
        source = m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m)
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    return float(np.mean(run(reference).argmax(1) == run(candidate).argmax(1)))


def _quantized_inputs(model: ir.Model) -> dict[str, bool]:
    """Node name -> whether its activation input comes from a DequantizeLinear."""
    found = {}
    for node in model.graph:
        if node.name in _fragile.NAMES.values() and node.op_type == "MatMul":
            producer = node.inputs[0].producer()
            found[node.name] = producer is not None and producer.op_type == "DequantizeLinear"
    return found


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sensitivity_ranks_the_fragile_node_first() -> None:
    model = _fragile.model()
    target = get_target("ort-cpu", cpu="avx2")
    ranges = calibrate(model, CalibrationData.from_source(_feeds(64)), tensors=tensors_to_calibrate(model, target))
    evaluator = Evaluator(model, _feeds(32, seed=2))
    found = analyze(Variants(model, ranges, target, per_channel=True), evaluator)
    ranked = found.ranked()
    assert ranked[0].node == "branch", ranked
    assert found.uniform_drop > 0.5, "uniform int8 must collapse on the outlier branch"
    assert ranked[0].recovered > 0.5 and all(abs(n.recovered) < 0.1 for n in ranked[1:]), ranked
    # One uniform evaluation plus one per candidate: the cost is linear in the node count.
    assert found.evaluations == 1 + len(found.nodes)
    assert evaluator.kind == "top-1 agreement with FP32"


def test_budget_met_with_only_the_fragile_node_in_float() -> None:
    original = _fragile.model_proto()
    model, report = quantize_mixed(ir.from_proto(original), _feeds(96), max_accuracy_drop=0.02,
                                   cpu="avx2", measure_latency=False)
    assert report.met and report.final_drop <= 0.02
    assert report.uniform_drop > 0.5
    assert [f.node for f in report.float_nodes] == ["branch"]
    quantized = _quantized_inputs(model)
    # NOTE: main1 stays float in uniform int8 too: its Relu feeds a float Gemm, so ORT cannot fuse its QDQ
    # and the self-check removes it; the search must not change what uniform int8 does elsewhere.
    uniform, _ = quantize_mixed(ir.from_proto(original), _feeds(96), max_accuracy_drop=1.0, cpu="avx2",
                                measure_latency=False)
    assert quantized == {**_quantized_inputs(uniform), "branch": False}, quantized
    assert quantized["spread"] is True
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    # Fresh inputs, never seen by the search: the budget holds there too.
    assert _agreement(original, proto) >= 0.97
    assert report.candidates >= 3 and report.candidates - len(report.float_nodes) >= 2


def test_loose_budget_gives_uniform_int8_without_analysis() -> None:
    model, report = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=1.0, cpu="avx2",
                                   measure_latency=False)
    assert report.float_nodes == [] and report.sensitivity is None
    assert report.search_evaluations == 2  # uniform, then the final model verified
    quantized = _quantized_inputs(model)
    assert quantized["branch"] is True and quantized["spread"] is True, quantized


def test_second_run_reads_the_cache_and_gives_the_same_bytes(tmp_path: Path) -> None:
    outs = []
    reports = []
    for _ in range(2):
        model, report = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=0.02, cpu="avx2",
                                       cache_dir=tmp_path / "cache", measure_latency=False)
        outs.append(ir.to_proto(model).SerializeToString())
        reports.append(report)
    assert outs[0] == outs[1]
    assert reports[0].sensitivity is not None and not reports[0].sensitivity.cached
    assert reports[1].sensitivity is not None and reports[1].sensitivity.cached
    assert [f.node for f in reports[1].float_nodes] == ["branch"]
    assert len(list((tmp_path / "cache").glob("sensitivity-*.json"))) == 1


def test_overrides_file_round_trips(tmp_path: Path) -> None:
    model, report = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=0.02, cpu="avx2",
                                   measure_latency=False)
    path = tmp_path / "overrides.json"
    save_overrides(path, report)
    pins = load_overrides(path)
    assert pins["branch"] == "float" and pins["main1"] == "int8" and pins["spread"] == "int8"
    doc = json.loads(path.read_text())
    assert doc["nodes"]["branch"]["recovered"] > 0.5
    # Pinned int8 is never moved to float, even when that misses the budget.
    _, pinned = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=0.02, cpu="avx2",
                               overrides={"branch": "int8"}, measure_latency=False)
    assert not pinned.met and "branch" not in [f.node for f in pinned.float_nodes]


def _cli_files(tmp_path: Path) -> tuple[Path, Path]:
    return _fragile.write(tmp_path)


def test_cli_mixed_then_overrides_reproduces_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = _cli_files(tmp_path)
    mixed = tmp_path / "mixed.onnx"
    args = ["quantize", str(model), "-o", str(mixed), "--calib", str(calib), "--cpu", "avx2",
            "--max-accuracy-drop", "0.02", "--save-overrides", str(tmp_path / "o.json"),
            "--save-ranges", str(tmp_path / "ranges.json"), "--curve", str(tmp_path / "curve.png")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kept in float:" in text and "branch (MatMul): recovers" in text
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert (tmp_path / ".onnxq-cache").is_dir(), "the sensitivity cache sits beside the ranges"
    assert _agreement(model, mixed) >= 0.97
    # The overrides file and the ranges give the same model through plain 'onnxq quantize'.
    again = tmp_path / "again.onnx"
    assert main(["quantize", str(model), "-o", str(again), "--ranges", str(tmp_path / "ranges.json"), "--cpu",
                 "avx2", "--overrides", str(tmp_path / "o.json"), "--json"]) == 0
    capsys.readouterr()
    assert _quantized_inputs(ir.load(again)) == _quantized_inputs(ir.load(mixed))
    assert _digest(again) == _digest(mixed)


def test_cli_labels_and_user_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = _cli_files(tmp_path)
    x = _fragile.samples(40, seed=3)["x"][:, 0]
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(tmp_path / "eval.npz", x=x, labels=ref.argmax(1))
    np.save(tmp_path / "labels.npy", ref.argmax(1))
    out = tmp_path / "labels.onnx"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cpu", "avx2",
                 "--max-accuracy-drop", "0.02", "--data", str(tmp_path / "eval.npz"), "--json",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    doc = json.loads(capsys.readouterr().out)["mixed"]
    assert doc["metric"] == "top-1 accuracy against the labels" and doc["held_samples"] == 40
    assert [f["node"] for f in doc["float_nodes"]] == ["branch"] and doc["met"]
    metric = f"{HERE / '_fragile.py'}:top1_vs_argmax_of_feature0"
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cpu", "avx2",
                 "--max-accuracy-drop", "0.02", "--data", str(tmp_path / "eval.npz"), "--labels",
                 str(tmp_path / "labels.npy"), "--metric", metric, "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    doc = json.loads(capsys.readouterr().out)["mixed"]
    assert doc["metric"] == metric and [f["node"] for f in doc["float_nodes"]] == ["branch"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"nodes": {"conv_9": "float"}}', "node 'conv_9' is not in the model"),
        ('{"nodes": {"branch": "int4"}}', "node 'branch': unknown precision 'int4'"),
        ('{"nodes": {"branch": {"precision": "fp8"}}}', "node 'branch': unknown precision 'fp8'"),
        ("{not json", "not valid JSON"),
        ('["branch"]', 'expected a JSON object with a "nodes" object'),
    ],
)
def test_cli_bad_overrides_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str, message: str) -> None:
    model, calib = _cli_files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "out.onnx"
    for extra in ([], ["--max-accuracy-drop", "0.02", "--cache-dir", str(tmp_path / "c")]):
        code = main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--overrides", str(bad), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert message in err and str(bad) in err and len(err.splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-accuracy-drop", "-1"], "--max-accuracy-drop -1.0: expected a number >= 0"),
        (["--max-accuracy-drop", "0.01", "--labels", "x.npy"], "--labels needs --data PATH"),
        (["--max-accuracy-drop", "0.01", "--metric", "no_such_module_xyz:f"], "cannot import no_such_module_xyz"),
        (["--max-accuracy-drop", "0.01", "--data", "missing.npz"], "--data missing.npz: no such file"),
    ],
)
def test_cli_mixed_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                 message: str) -> None:
    model, calib = _cli_files(tmp_path)
    out = tmp_path / "out.onnx"
    code = main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cache-dir", str(tmp_path / "c"),
                 *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_budget_not_met_exits_1_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = _cli_files(tmp_path)
    pins = tmp_path / "pins.json"
    pins.write_text('{"nodes": {"branch": "int8"}}')
    out = tmp_path / "out.onnx"
    code = main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cpu", "avx2",
                 "--max-accuracy-drop", "0.02", "--overrides", str(pins), "--cache-dir", str(tmp_path / "c")])
    text = capsys.readouterr().out
    assert code == 1 and "BUDGET NOT MET" in text and "pinned int8: branch" in text
    assert out.exists()


def test_api_overrides_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(OverridesError, match="missing.json: cannot read the overrides file"):
        load_overrides(tmp_path / "missing.json")
    with pytest.raises(OverridesError, match="overrides: node 'nope' is not in the model"):
        quantize_mixed(_fragile.model(), _feeds(32), max_accuracy_drop=0.01, overrides={"nope": "float"})


def test_bisection_over_the_order_finds_the_same_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.quantization import mixed_precision

    monkeypatch.setattr(mixed_precision, "LINEAR_STEPS", 0)  # NOTE: bisect from the first step
    _, report = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=0.02, cpu="avx2",
                               measure_latency=False)
    assert [f.node for f in report.float_nodes] == ["branch"] and report.met
    # uniform, all candidates in float, one bisection step, the final model
    assert report.search_evaluations == 4
    assert [p.floats for p in report.curve] == [0, 1, 3, 1]


def test_tensorrt_target_keeps_the_fragile_node_in_float() -> None:
    model, report = quantize_mixed(_fragile.model(), _feeds(96), max_accuracy_drop=0.02, target="tensorrt",
                                   measure_latency=False)
    assert [f.node for f in report.float_nodes] == ["branch"] and report.met
    quantized = _quantized_inputs(model)
    assert quantized["branch"] is False and quantized["spread"] is True
    # TensorRT's profile: int8 symmetric activations (zero point 0)
    zps = [ir.convenience.get_const_tensor(n.inputs[2]).numpy() for n in model.graph
           if n.op_type == "QuantizeLinear" and len(n.inputs) > 2 and n.inputs[2] is not None]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


def test_external_weights_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Model copies used to be protobuf round trips, which keep only the relative location of
    # external weights: the search then failed to load them from any other folder.
    import onnx.numpy_helper
    import onnx.parser

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 32] x) => (float[N, 10] y) { h = MatMul(x, w1)  r = Relu(h)  y = MatMul(r, w2) }""")
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (32, 32)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (32, 10)).astype(np.float32), "w2")])
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    onnx.save(proto, tmp_path / "model" / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    np.savez(tmp_path / "model" / "calib.npz", x=rng.normal(0, 1, (48, 1, 32)).astype(np.float32))
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    monkeypatch.chdir(tmp_path / "elsewhere")
    code = main(["quantize", "../model/m.onnx", "-o", "../q.onnx", "--calib", "../model/calib.npz",
                 "--max-accuracy-drop", "0.01", "--cpu", "avx2", "-q"])
    assert code == 0 and (tmp_path / "q.onnx").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert list((tmp_path / "elsewhere").iterdir()) == []
