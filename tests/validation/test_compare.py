"""compare(): output metrics against onnxruntime, per-layer SQNR naming a damaged layer, accuracy rules, gate."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxq
from onnxq import runtime
from onnxq.errors import OptionError
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model, save_model
from onnxq.validation.compare import (
    Accuracy,
    CompareError,
    accuracy_gate,
    compare,
    gate_files,
    load_labels,
    load_metric,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """The bundled example quantized by onnxq (static QDQ, minmax, per-channel)."""
    model, _ = onnxq.quantize(load_model(example_model_path()), str(example_inputs_path()), self_check=False)
    path = tmp_path_factory.mktemp("q") / "q.onnx"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    with np.load(example_inputs_path()) as npz:
        return {k: npz[k] for k in npz.files}


def test_output_metrics_match_onnxruntime(quantized: Path, data: dict[str, np.ndarray]) -> None:
    report = compare(example_model_path(), quantized, example_inputs_path())
    assert report.samples == 32 and report.rows == 32
    [logits] = report.outputs
    ref = runtime.run(load_model(example_model_path()), {"input": data["input"]})["logits"].astype(np.float64)
    got = runtime.run(load_model(quantized), {"input": data["input"]})["logits"].astype(np.float64)
    assert logits.max_abs_error == pytest.approx(np.abs(ref - got).max(), rel=1e-5)
    assert logits.mean_abs_error == pytest.approx(np.abs(ref - got).mean(), rel=1e-5)
    cosine = float((ref.ravel() @ got.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert logits.cosine == pytest.approx(cosine, rel=1e-6)
    assert logits.sqnr_db == pytest.approx(10 * math.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)), rel=1e-6)
    assert logits.top1_agreement == pytest.approx(float(np.mean(ref.argmax(1) == got.argmax(1))))
    # The data .npz carries labels: accuracy is top-1 against them.
    assert report.accuracy.kind == "labels"
    assert report.accuracy.reference == pytest.approx(float(np.mean(ref.argmax(1) == data["labels"])))
    assert report.accuracy.candidate == pytest.approx(float(np.mean(got.argmax(1) == data["labels"])))
    # Every quantized activation is matched to its float tensor, worst first.
    assert {layer.tensor for layer in report.layers} >= {"input", "relu", "relu_1", "relu_2", "max_pool2d"}
    assert [layer.sqnr_db for layer in report.layers] == sorted(layer.sqnr_db for layer in report.layers)
    assert report.error_starts_at is None and all(layer.sqnr_db > 25 for layer in report.layers)
    doc = report.to_json()
    assert doc["accuracy"]["kind"] == "labels" and doc["layers"][0]["tensor"] == report.layers[0].tensor


def test_per_layer_sqnr_names_a_damaged_layer(quantized: Path, tmp_path: Path) -> None:
    proto = onnx.load(quantized)
    # Triple the scale of the second Conv's weights: its output (relu_1) is 3x too large, and
    # everything after it inherits the error.
    [scale] = [t for t in proto.graph.initializer if t.name == "features.3.weight_scale"]
    values = onnx.numpy_helper.to_array(scale) * 3
    scale.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), scale.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, damaged)
    report = compare(example_model_path(), damaged, example_inputs_path())
    start = report.error_starts_at
    assert start is not None and start.tensor == "relu_1" and start.node == "node_relu_1"
    by_tensor = {layer.tensor: layer.sqnr_db for layer in report.layers}
    assert by_tensor["relu"] > 30 and by_tensor["relu_1"] < 0
    assert report.layers[0].sqnr_db < 0  # the worst layer is the damaged one or one after it
    assert any("error starts at node_relu_1" in line for line in report.lines())
    assert report.outputs[0].sqnr_db < 10


def test_agreement_without_labels(quantized: Path, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input=data["input"])
    report = compare(example_model_path(), quantized, inputs)
    assert report.accuracy.kind == "top1-agreement"
    assert report.accuracy.reference == 1.0
    assert report.accuracy.candidate == report.outputs[0].top1_agreement


def test_labels_file_overrides_the_data(quantized: Path, data: dict[str, np.ndarray], tmp_path: Path) -> None:
    wrong = (data["labels"] + 1) % 10
    np.save(tmp_path / "labels.npy", wrong)
    report = compare(example_model_path(), quantized, example_inputs_path(), labels=tmp_path / "labels.npy")
    assert report.accuracy.kind == "labels" and report.accuracy.reference < 0.2
    np.savez(tmp_path / "labels.npz", labels=data["labels"][:5])
    with pytest.raises(CompareError, match="5 labels for 32 rows"):
        compare(example_model_path(), quantized, example_inputs_path(), labels=tmp_path / "labels.npz")
    (tmp_path / "labels.txt").write_text("\n".join(str(v) for v in data["labels"]))
    assert np.array_equal(load_labels(tmp_path / "labels.txt"), data["labels"])


def _accuracy(outputs: list[np.ndarray], labels: np.ndarray | None) -> float:
    return float(np.mean(outputs[0].argmax(1) == labels))


def test_user_metric_callable_and_module_path(quantized: Path, tmp_path: Path, monkeypatch) -> None:
    by_labels = compare(example_model_path(), quantized, example_inputs_path()).accuracy
    report = compare(example_model_path(), quantized, example_inputs_path(), metric=_accuracy, layers=False)
    assert report.accuracy.kind == "metric"
    assert (report.accuracy.reference, report.accuracy.candidate) == (by_labels.reference, by_labels.candidate)
    (tmp_path / "my_metric_mod.py").write_text(
        "import numpy as np\n"
        "def neg_mse(outputs, labels):\n"
        "    return -float(np.mean(outputs[0] ** 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_metric("my_metric_mod:neg_mse")
    report = compare(example_model_path(), quantized, example_inputs_path(), metric="my_metric_mod:neg_mse",
                     layers=False)
    assert report.accuracy.description == "metric neg_mse" and report.accuracy.reference < 0
    assert fn is sys.modules["my_metric_mod"].neg_mse
    with pytest.raises(OptionError, match="expected module:function"):
        load_metric("nocolon")
    with pytest.raises(OptionError, match="no function 'missing'"):
        load_metric("my_metric_mod:missing")
    # NOTE: the same loader serves compare and --max-accuracy-drop: a file path works in both.
    by_path = load_metric(f"{tmp_path / 'my_metric_mod.py'}:neg_mse")
    assert by_path(np.ones((1, 2), np.float32)[None], None) == -1.0

    def broken(outputs: list[np.ndarray], labels: np.ndarray | None) -> float:
        raise KeyError("logits")

    with pytest.raises(CompareError, match="metric broken: raised KeyError"):
        compare(example_model_path(), quantized, example_inputs_path(), metric=broken, layers=False)


_NOT_SCORES = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 2, 3] x) => (float[N, 2, 3] y) <float[1] c = {{{c}}}> {{ y = Mul(x, c) }}
"""


def test_sqnr_accuracy_when_outputs_are_not_class_scores(tmp_path: Path) -> None:
    for name, c in (("ref", 1.0), ("cand", 1.01)):
        onnx.save(onnx.parser.parse_model(_NOT_SCORES.format(c=c)), tmp_path / f"{name}.onnx")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    report = compare(tmp_path / "ref.onnx", tmp_path / "cand.onnx", tmp_path / "x.npz")
    assert report.accuracy.kind == "sqnr" and report.rows == 4
    assert report.accuracy.candidate == pytest.approx(40.0, abs=1e-3)  # 1% error = 40 dB
    assert report.layers == [] and report.notes
    assert accuracy_gate(report.accuracy, min_sqnr_db=35).passed
    assert not accuracy_gate(report.accuracy, min_sqnr_db=45).passed
    with pytest.raises(OptionError, match="give --labels or --metric"):
        accuracy_gate(report.accuracy, max_accuracy_drop=0.01)
    assert report.to_json()["accuracy"]["reference"] is None  # inf is not JSON


def test_accuracy_gate_lines() -> None:
    acc = Accuracy("labels", 0.98, 0.96, "top-1")
    verdict = accuracy_gate(acc, max_accuracy_drop=0.01, speedup=2.0, min_speedup=1.5, size_bytes=10, max_size=100)
    assert not verdict.passed
    assert verdict.line.startswith("FAIL: accuracy drop 0.0200 > 0.01") and "speedup 2.00x >= 1.5x" in verdict.line
    assert verdict.failures == ("accuracy drop 0.0200 > 0.01",)
    assert accuracy_gate(acc, max_accuracy_drop=0.02).passed
    assert accuracy_gate(acc).line == "PASS: no criteria given"


def test_gate_files_measures_only_what_is_asked(quantized: Path) -> None:
    verdict, figures = gate_files(example_model_path(), quantized, max_size=10**6)
    assert verdict.passed and "accuracy" not in figures and "latency" not in figures
    verdict, figures = gate_files(example_model_path(), quantized, example_inputs_path(), max_accuracy_drop=0.05,
                                  min_speedup=0.01, max_size=1000, budget_s=0.2)
    assert not verdict.passed and verdict.failures == (f"size {figures['size_bytes']:,} B > 1,000 B",)
    assert figures["latency"]["speedup"] > 0 and figures["accuracy"]["kind"] == "labels"
    with pytest.raises(OptionError, match="need samples"):
        gate_files(example_model_path(), quantized, max_accuracy_drop=0.01)


def test_models_with_other_outputs_are_refused(tmp_path: Path) -> None:
    onnx.save(onnx.parser.parse_model(_NOT_SCORES.format(c=1.0)), tmp_path / "other.onnx")
    with pytest.raises(CompareError, match="differ from the reference"):
        compare(example_model_path(), tmp_path / "other.onnx", example_inputs_path())


@pytest.mark.slow
def test_zoo_resnet_compare_points_at_its_worst_layer(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # NOTE: models/ is scripts, not installed
    from models import zoo

    zoo.ensure_built(["resnet_digits"])
    path = zoo.model_path("resnet_digits")
    model, _ = onnxq.quantize(load_model(path), str(path.with_name("resnet_digits.calib.npz")), self_check=False)
    save_model(model, tmp_path / "q.onnx")
    report = compare(path, tmp_path / "q.onnx", path.with_name("resnet_digits.eval.npz"))
    assert report.samples == 450 and report.accuracy.kind == "labels"
    assert report.accuracy.reference == pytest.approx(zoo.entry("resnet_digits")["metric"]["value"], abs=1e-6)
    assert report.accuracy.drop <= 0.02
    assert len(report.layers) >= 10
    worst = min(report.layers, key=lambda layer: layer.sqnr_db)
    assert report.layers[0] == worst
    assert f"worst layers (of {len(report.layers)}): {worst.node} ('{worst.tensor}')" in "\n".join(report.lines())


def test_in_memory_models_with_external_weights_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    # compare() on ir.Models whose weights stay lazy on disk: the sessions read them from the
    # models' folder (they used to get bytes that onnxruntime resolved against the working directory).
    folder = tmp_path / "models"
    folder.mkdir()
    proto = onnx.load(example_model_path())
    onnx.save(proto, folder / "ref.onnx", save_as_external_data=True, location="ref.data", size_threshold=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    reference = load_model(folder / "ref.onnx")
    candidate = load_model(folder / "ref.onnx")
    report = compare(reference, candidate, example_inputs_path())
    assert report.samples > 0 and all(math.isinf(o.sqnr_db) for o in report.outputs)


def test_large_external_weights_stay_on_disk_and_are_read_from_their_folder(tmp_path: Path, monkeypatch) -> None:
    import onnx.parser

    from onnxq import runtime as rt

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x) => (float[N, 4] y) { h = MatMul(x, w)  y = Relu(h) }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 1, (8, 4)).astype(np.float32), "w"))
    (tmp_path / "m").mkdir()
    onnx.save(proto, tmp_path / "m" / "a.onnx", save_as_external_data=True, location="a.data", size_threshold=0)
    np.savez(tmp_path / "d.npz", x=rng.normal(0, 1, (4, 1, 8)).astype(np.float32))
    monkeypatch.setattr(rt, "INLINE_EXTERNAL_BYTES", 0)  # nothing read in: onnxruntime reads the folder
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    data, folder = rt.session_bytes(load_model("../m/a.onnx"))
    assert folder == str((tmp_path / "m").resolve()) and b"a.data" in data
    report = compare(load_model("../m/a.onnx"), load_model("../m/a.onnx"), tmp_path / "d.npz")
    assert report.samples == 4
