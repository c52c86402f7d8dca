"""calibrate(): the augmented session, tensor selection, subgraphs, ranges artifact, zoo model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnxruntime.quantization import CalibrationDataReader

from onnxq import runtime
from onnxq.calibration import (
    CalibrationError,
    HistogramObserver,
    MinMaxObserver,
    Ranges,
    RangesError,
    calibrate,
    collect,
    model_fingerprint,
)
from onnxq.errors import OptionError
from tests.conftest import parse

CHAIN = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, C] x) => (float[N, C] y, int64[2] s) {
  two = Constant<value_float = 2.0>()
  a = Mul(x, two)
  r = Relu(a)
  y = Sub(r, x)
  s = Shape(y)
}
"""

IF_MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N] x, bool c) => (float[N] y) {
  y = If(c) <
    then_branch = t () => (float[N] inner_t) { inner_t = Relu(x) },
    else_branch = e () => (float[N] inner_e) { inner_e = Neg(x) }
  >
}
"""

LOOP_MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N] x) => (float[N] y) {
  n = Constant<value = int64 {2}>()
  go = Constant<value = bool {1}>()
  y = Loop(n, go, x) <
    body = b (int64 i, bool c, float[N] acc) => (bool c_out, float[N] acc_out) {
      c_out = Identity(c)
      acc_out = Relu(acc)
    }
  >
}
"""


def _samples(count: int = 6, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # Shapes differ from sample to sample along the dynamic dims N and C.
    return [{"x": rng.standard_normal((1 + i % 3, 2 + i)).astype(np.float32) * (i + 1)} for i in range(count)]


def _proto_bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


def test_minmax_matches_numpy_and_onnxruntime_on_variable_shapes() -> None:
    model = parse(CHAIN)
    before = _proto_bytes(model)
    samples = _samples()
    ranges = calibrate(model, samples)
    assert _proto_bytes(model) == before  # the user's model is untouched
    assert sorted(ranges) == ["a", "r", "two", "x", "y"]  # float only: 's' (int64) is not observed
    xs = np.concatenate([s["x"].reshape(-1) for s in samples])
    assert (ranges["x"].min, ranges["x"].max) == (float(xs.min()), float(xs.max()))
    assert (ranges["a"].min, ranges["a"].max) == (float((2 * xs).min()), float((2 * xs).max()))
    assert ranges["r"].min == 0.0 and ranges["r"].max == float((2 * xs).max())
    ys = np.concatenate([runtime.run(model, s)["y"].reshape(-1) for s in samples])
    assert (ranges["y"].min, ranges["y"].max) == (float(ys.min()), float(ys.max()))
    assert ranges.samples == len(samples) and ranges.method == "minmax"
    assert ranges.fingerprint == model_fingerprint(model)


@pytest.mark.parametrize("method", ["moving_average", "percentile", "entropy", "mse"])
def test_every_method_gives_ranges_inside_minmax(method: str) -> None:
    model = parse(CHAIN)
    samples = _samples(12)
    exact = calibrate(model, samples)
    ranges = calibrate(model, samples, method=method)
    assert ranges.method == method and set(ranges) == set(exact)
    for name, r in ranges.items():
        assert exact[name].min - 1e-6 <= r.min < r.max <= exact[name].max + 1e-6, (name, r, exact[name])


def test_selected_tensors_and_subgraphs(caplog: pytest.LogCaptureFixture) -> None:
    model = parse(CHAIN)
    ranges = calibrate(model, _samples(), tensors=["r", "s", "r"])
    assert list(ranges) == ["r"] and ranges.details["not_observed"] == {"s": "dtype INT64 is not float"}
    with pytest.raises(CalibrationError, match="tensor 'nope' is not in the model"):
        calibrate(model, _samples(), tensors=["nope"])

    branchy = parse(IF_MODEL)
    feeds = [{"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)}]
    assert sorted(calibrate(branchy, feeds)) == ["x", "y"]  # defaults: main graph only

    looped = parse(LOOP_MODEL)
    ranges = calibrate(looped, [{"x": np.array([-1.0, 2.0], np.float32)}], tensors=["y", "acc_out"])
    assert list(ranges) == ["y"]
    assert "inside a subgraph of node" in ranges.details["not_observed"]["acc_out"]
    assert "not observing 'acc_out'" in caplog.text


def test_if_branch_tensors_are_observed_on_the_samples_that_take_their_branch() -> None:
    model = parse(IF_MODEL)
    before = _proto_bytes(model)
    feeds = [
        {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)},
        {"x": np.array([-3.0, 0.5], np.float32), "c": np.array(False)},
        {"x": np.array([4.0, -0.25], np.float32), "c": np.array(True)},
    ]
    ranges = calibrate(model, feeds, tensors=["y", "inner_t", "inner_e"])
    assert _proto_bytes(model) == before
    assert ranges["inner_t"] == calibrate(model, feeds, tensors=["inner_t"])["inner_t"]
    assert (ranges["inner_t"].min, ranges["inner_t"].max) == (0.0, 4.0)  # Relu of samples 0 and 2
    assert (ranges["inner_e"].min, ranges["inner_e"].max) == (-0.5, 3.0)  # Neg of sample 1
    assert (ranges["y"].min, ranges["y"].max) == (-0.5, 4.0)
    only_true = calibrate(model, feeds[:1], tensors=["inner_e"])
    assert "inner_e" not in only_true and only_true.details["empty"] == ["inner_e"]


def test_calibration_data_reader_is_used_as_it_is() -> None:
    samples = _samples()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    model = parse(CHAIN)
    assert calibrate(model, Reader(), method="entropy").samples == len(samples)
    assert calibrate(model, Reader()).tensors == calibrate(model, samples).tensors


def test_collect_once_serves_every_histogram_method() -> None:
    model = parse(CHAIN)
    collection = collect(model, _samples(), HistogramObserver)
    for method in ("percentile", "entropy", "mse", "minmax"):
        assert collection.ranges(method).tensors == calibrate(model, _samples(), method=method).tensors
    assert collection.ranges("percentile", percentile=99.0).details["percentile"] == 99.0
    with pytest.raises(ValueError, match="gives only 'minmax' ranges"):
        collect(model, _samples(), MinMaxObserver).ranges("entropy")


def test_ranges_are_deterministic_and_round_trip(tmp_path: Path) -> None:
    model = parse(CHAIN)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    calibrate(model, _samples(), method="percentile", percentile=99.9).save(first)
    calibrate(model, _samples(), method="percentile", percentile=99.9).save(second)
    assert first.read_bytes() == second.read_bytes()
    loaded = Ranges.load(first, fingerprint=model_fingerprint(model))
    assert loaded.tensors == calibrate(model, _samples(), method="percentile", percentile=99.9).tensors
    assert loaded.details["percentile"] == 99.9 and loaded.samples == 6
    other = parse(CHAIN.replace("Relu", "Sigmoid"))
    with pytest.raises(RangesError, match="measured on another model"):
        Ranges.load(first, fingerprint=model_fingerprint(other))


def test_fingerprint_is_stable_across_processes_and_sensitive_to_structure(tmp_path: Path) -> None:
    model = parse(CHAIN)
    path = tmp_path / "m.onnx"
    ir.save(model, path)
    code = (
        "import sys, onnx_ir as ir; from onnxq.calibration import model_fingerprint; "
        "print(model_fingerprint(ir.load(sys.argv[1])))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert child.stdout.strip() == model_fingerprint(model) == model_fingerprint(ir.load(path))
    assert model_fingerprint(parse(CHAIN.replace("2.0", "3.0"))) != model_fingerprint(model)
    assert model_fingerprint(parse(IF_MODEL.replace("Neg", "Abs"))) != model_fingerprint(parse(IF_MODEL))


def test_bad_method_options_and_runtime_failures() -> None:
    model = parse(CHAIN)
    with pytest.raises(OptionError, match="unknown calibration method 'kl'"):
        calibrate(model, _samples(), method="kl")
    with pytest.raises(OptionError, match="percentile must be in"):
        calibrate(model, _samples(), method="percentile", percentile=120)
    with pytest.raises(OptionError, match="unexpected options"):
        calibrate(model, _samples(), method="minmax", bins=10)
    pair = parse(
        '<ir_version: 10, opset_import: ["" : 18]> g (float[N] a, float[M] b) => (float[N] c) { c = Add(a, b) }'
    )
    feeds = [{"a": np.ones(3, np.float32), "b": np.ones(4, np.float32)}]
    with pytest.raises(CalibrationError, match="^sample 0: onnxruntime failed"):
        calibrate(pair, feeds)


def test_progress_bar_runs() -> None:
    assert calibrate(parse(CHAIN), _samples(), progress=True).samples == 6


def test_moving_average_options_recorded(tmp_path: Path) -> None:
    ranges = calibrate(parse(CHAIN), _samples(), method="moving-average", momentum=0.5)
    assert ranges.method == "moving_average" and ranges.details["momentum"] == 0.5
    ranges.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["details"]["momentum"] == 0.5


@pytest.mark.slow
def test_zoo_digits_cnn_from_its_calibration_npz() -> None:
    from models import zoo

    zoo.ensure_built(["digits_cnn"])
    path = zoo.model_path("digits_cnn")
    model = ir.load(path)
    calib = path.with_name("digits_cnn.calib.npz")
    ranges = calibrate(model, calib)
    assert ranges.samples == 256
    conv_outputs = [n.outputs[0].name for n in model.graph if n.op_type == "Conv"]
    assert conv_outputs and all(name in ranges for name in conv_outputs)
    # The output's range is the min/max of onnxruntime's outputs over the same samples.
    (logits,) = zoo.run_onnx(path, zoo.load_calib("digits_cnn"))
    out = model.graph.outputs[0].name
    assert ranges[out].min == pytest.approx(float(logits.min()), abs=1e-5)
    assert ranges[out].max == pytest.approx(float(logits.max()), abs=1e-5)
    entropy = calibrate(model, calib, method="entropy")
    relus = [n.outputs[0].name for n in model.graph if n.op_type == "Relu"]
    for name in relus:
        assert entropy[name].min == 0.0 and 0.0 < entropy[name].max <= ranges[name].max


def test_large_activations_are_read_in_groups_with_the_same_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.calibration import collector

    model = parse("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 64, 64] x) => (float[N, 64, 64] y) {
      a = Relu(x)
      b = Mul(a, a)
      c = Sub(b, x)
      y = Tanh(c)
    }""")
    rng = np.random.default_rng(3)
    samples = [{"x": rng.standard_normal((2, 64, 64)).astype(np.float32) * (i + 1)} for i in range(4)]
    names = ["x", "a", "b", "c", "y"]
    # each tensor of a sample is 2 * 64 * 64 * 4 = 32768 bytes: three fit in 100000, not four
    assert collector.output_groups(model, names, samples[0], 100_000) == [["x", "a", "b"], ["c", "y"]]
    assert collector.output_groups(model, names, samples[0], 10**9) == [names]
    whole = calibrate(model, samples, method="percentile")
    runs = []
    real = collector._session
    monkeypatch.setattr(collector, "_session", lambda *a: runs.append(1) or real(*a))
    monkeypatch.setattr(collector, "GROUP_BYTES", 40_000)  # one tensor a group
    grouped = calibrate(model, samples, method="percentile")
    assert len(runs) == 5
    assert grouped.samples == whole.samples == 4
    assert {k: grouped[k] for k in grouped} == {k: whole[k] for k in whole}
