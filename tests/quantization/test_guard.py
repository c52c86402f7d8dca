"""The accuracy guard of ``onnxq quantize``: a plain result below the floor climbs the ladder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.cli import main
from onnxq.quantization.guard import (
    CLEARLY_SLOWER,
    FLOAT_RUNG,
    TIMED_MS,
    Rung,
    float_still_needed,
    quantize_guarded,
)
from tests.quantization import _fragile


def _agreement(reference: ir.Model, candidate: ir.Model, x: np.ndarray) -> float:
    def run(m: ir.Model) -> np.ndarray:
        sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"x": row})[0] for row in x])

    return float(np.mean(run(reference).argmax(-1) == run(candidate).argmax(-1)))


def test_guard_recovers_the_fragile_classifier() -> None:
    x = _fragile.samples(96)["x"]
    feeds = [{"x": row} for row in x]
    model, report, guard = quantize_guarded(_fragile.model(), feeds, cpu="avx2", time_limit_s=120)
    first = guard.rungs[0]
    assert first.name == "plain (minmax)" and not first.within_floor and "top-1" in first.fidelity
    assert guard.within_floor and guard.chosen != first.name and len(guard.rungs) >= 2
    assert report.self_check is not None and not any("fidelity floor" in w for w in report.self_check.warnings)
    held = _fragile.samples(200, seed=7)["x"]
    assert _agreement(_fragile.model(), model, held) >= 0.95
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph) > 0, "recovered in INT8, not all float"
    doc = json.loads(json.dumps(guard.to_json()))
    assert doc["within_floor"] is True and doc["rungs"][0]["within_floor"] is False
    assert any(line.startswith("guard: kept") for line in guard.lines())


def test_guard_keeps_a_faithful_plain_result() -> None:
    # The same graph without its outlier channel quantizes well: the first rung is kept, nothing else runs.
    proto = _fragile.model_proto()
    for init in proto.graph.initializer:
        if init.name == "wa":
            arr = np.frombuffer(init.raw_data, np.float32).reshape(16, 16).copy() if init.raw_data else None
            assert arr is not None
            arr[0, 0] = 0.05
            init.raw_data = arr.tobytes()
    feeds = [{"x": row} for row in _fragile.samples(64)["x"]]
    _, _, guard = quantize_guarded(ir.from_proto(proto), feeds, cpu="avx2")
    # no recovery rung runs; the optimized float model is measured only when this tiny MLP's INT8
    # result is clearly slower than float (then the faster of the two is kept)
    names = [r.name for r in guard.rungs]
    assert names[0] == "plain (minmax)" and guard.rungs[0].within_floor and guard.within_floor
    assert set(names[1:]) <= {FLOAT_RUNG}
    if FLOAT_RUNG in names:
        assert (guard.rungs[0].speedup or 0) < CLEARLY_SLOWER


def test_float_is_measured_when_the_only_faithful_rungs_are_clearly_slower() -> None:
    # PP-OCR's direction classifier on a VNNI Xeon: plain below the floor, percentile faithful at 0.65x.
    plain = Rung("plain (minmax)", False, "top-1 96.0%", 0.65, 3.0)
    slow = Rung("calibration (percentile)", True, "top-1 100.0%", 0.65, 3.0)
    fast = Rung("calibration (mse)", True, "top-1 100.0%", 1.4, 3.0)
    assert float_still_needed([plain], 0.9)
    assert float_still_needed([plain, slow], 0.9)
    assert not float_still_needed([plain, slow, fast], 0.9)
    assert not float_still_needed([plain, slow], TIMED_MS / 2)  # too short to time: kept as measured
    assert float_still_needed([plain, Rung("x", False, "", 0.1, 1.0)], None)


@pytest.mark.parametrize("guard", [True, False])
def test_cli_guard_and_no_guard(tmp_path: Path, capsys: pytest.CaptureFixture[str], guard: bool) -> None:
    model, calib = _fragile.write(tmp_path)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cpu", "avx2", "--json"]
    assert main(args + ([] if guard else ["--no-guard"])) == 0
    doc = json.loads(capsys.readouterr().out)
    if guard:
        assert doc["within_floor"] is True and len(doc["guard"]["rungs"]) >= 2
        assert main(args[:-1]) == 0
        text = capsys.readouterr().out.strip().splitlines()
        assert text[-1].startswith("guard: kept") and "NO RESULT" not in text[-1]
    else:
        assert "guard" not in doc
        assert any("fidelity floor" in w for w in doc["self_check"]["warnings"])


def test_mixed_precision_analysis_stops_at_the_deadline() -> None:
    from onnxq.quantization.mixed_precision import quantize_mixed

    feeds = [{"x": row} for row in _fragile.samples(96)["x"]]
    _, report = quantize_mixed(_fragile.model(), feeds, max_accuracy_drop=0.03, cpu="avx2", measure_latency=False,
                               self_check=False, deadline=0.0)  # already past: nothing is measured
    assert report.sensitivity is not None and report.sensitivity.nodes
    assert all(n.recovered == 0.0 for n in report.sensitivity.nodes)
    assert report.sensitivity.evaluations == 1  # uniform INT8 only


def test_mixed_precision_and_guard_take_a_scalar_input() -> None:
    # A voice-activity detector feeds a 0-d sample rate beside the audio: mixed precision used to slice it.
    import onnx
    import onnx.numpy_helper
    import onnx.parser

    from onnxq.quantization.mixed_precision import quantize_mixed

    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16] x, int64 sr) => (float[N, 10] y) {
      s = Cast<to=1>(sr)
      k = Div(s, s)
      h = MatMul(x, w1)
      r = Relu(h)
      m = MatMul(r, w2)
      y = Mul(m, k)
    }""")
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w1"),
                                    onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 10)).astype(np.float32), "w2")])
    feeds = [{"x": rng.normal(0, 1, (1, 16)).astype(np.float32), "sr": np.array(16000, np.int64)} for _ in range(48)]
    model, report = quantize_mixed(ir.from_proto(proto), feeds, max_accuracy_drop=0.01, cpu="avx2")
    assert report.met and report.quantize.self_check is not None and report.quantize.self_check.samples > 1
    _, _, guard = quantize_guarded(ir.from_proto(proto), feeds, cpu="avx2")
    assert guard.rungs and guard.rungs[0].samples >= 8


def test_guarded_output_is_byte_identical_twice(tmp_path: Path) -> None:
    model, calib = _fragile.write(tmp_path)
    blobs = []
    for i in range(2):
        out = tmp_path / f"q{i}.onnx"
        assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--cpu", "avx2", "-q"]) == 0
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]


def test_evaluator_scores_the_worst_output() -> None:
    # A detector's second head can collapse while the first is exact: the budget must see it.
    import onnx
    import onnx.numpy_helper
    import onnx.parser

    from onnxq.quantization.sensitivity import Evaluator

    def two_heads(sign: float) -> ir.Model:
        proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, 4] a, float[N, 4] b) { a = MatMul(x, wa)  b = MatMul(x, wb) }""")
        rng = np.random.default_rng(0)
        proto.graph.initializer.extend([
            onnx.numpy_helper.from_array(rng.normal(0, 1, (8, 4)).astype(np.float32), "wa"),
            onnx.numpy_helper.from_array((sign * rng.normal(0, 1, (8, 4))).astype(np.float32), "wb")])
        return ir.from_proto(proto)

    feeds = [{"x": np.random.default_rng(i).normal(0, 1, (1, 8)).astype(np.float32)} for i in range(8)]
    evaluator = Evaluator(two_heads(1.0), feeds)
    assert evaluator.reference_score == pytest.approx(1.0)
    assert evaluator.score(two_heads(-1.0)) < 0.2  # head b flipped (its top-1 agreement); head a exact
    assert "worst of 2 outputs" in evaluator.kind


def test_choose_weighs_the_optimized_float_model() -> None:
    from onnxq.quantization.guard import FLOAT_MARGIN, FLOAT_RUNG, Rung, choose

    def rung(name: str, ok: bool, speedup: float) -> tuple[Rung, str, SimpleNamespace]:
        return Rung(name, ok, "", speedup, 1.0), name, SimpleNamespace(self_check=None)

    floating = rung(FLOAT_RUNG, True, 1.5)
    # A faithful quantized result faster than float is kept; float wins only beyond the margin.
    assert choose([rung("plain", True, 1.6), floating], floating[0])[0][1] == "plain"
    assert choose([rung("plain", True, 1.5 / FLOAT_MARGIN * 1.01), floating], floating[0])[0][1] == "plain"
    chosen, rival = choose([rung("plain", True, 1.2), floating], floating[0])
    assert chosen[1] == FLOAT_RUNG and rival is not None and rival.name == "plain"
    # Nothing quantized is faithful: accuracy first, float even when a broken quantized result is
    # faster, unless float itself is slower than FP32; then the most faithful quantized result.
    assert choose([rung("plain", False, 1.4), floating], floating[0])[0][1] == FLOAT_RUNG
    assert choose([rung("plain", False, 1.8), floating], floating[0])[0][1] == FLOAT_RUNG
    slow_float = rung(FLOAT_RUNG, True, 0.9)
    assert choose([rung("plain", False, 1.8), slow_float], slow_float[0])[0][1] == "plain"
    # A result the ladder recovered must beat float by the margin (its evidence is a small held set).
    plain, mixed = rung("plain", False, 1.4), rung("mixed", True, 1.27)
    floating = rung(FLOAT_RUNG, True, 1.25)
    assert choose([plain, mixed, floating], floating[0], plain[0])[0][1] == FLOAT_RUNG
    fast = rung("mixed", True, 1.4)
    assert choose([plain, fast, floating], floating[0], plain[0])[0][1] == "mixed"
    # No float rung (a model under 1 ms): the fastest faithful result.
    assert choose([rung("plain", False, 2.0), rung("mixed", True, 1.1)], None)[0][1] == "mixed"


def test_mixed_precision_is_tried_only_where_it_could_beat_float() -> None:
    from onnxq.quantization.guard import FLOAT_MARGIN, MIXED_KEEPS, Rung, mixed_can_win

    floating = Rung("float", True, "", 1.5, 1.0)
    # NOTE: mixed results kept at most MIXED_KEEPS of the plain speed-up on the dev set
    assert mixed_can_win(Rung("plain", False, "", 1.5 * FLOAT_MARGIN / MIXED_KEEPS * 1.01, 1.0), floating)
    assert not mixed_can_win(Rung("plain", False, "", 1.67, 1.0), floating)  # PicoDet: plain 1.67x, float 1.51x
    assert mixed_can_win(Rung("plain", False, "", 1.1, 1.0), None)  # float not measured (below 1 ms)


LOUDNESS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 32] x) => (float[N, 10] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}"""


def test_guard_takes_run_time_activation_ranges_when_calibrated_ones_cannot_fit_every_input() -> None:
    # Inputs whose magnitude spans four decades (a recording's loudness): one calibrated range per
    # tensor rounds the quiet inputs to zero whatever the clipping, while ranges taken per input at
    # run time (dynamic INT8) keep every decision. The model is positively homogeneous, so FP32
    # decides the same class at any loudness.
    import onnx.numpy_helper
    import onnx.parser

    from onnxq.quantization.guard import DYNAMIC_RUNG

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(LOUDNESS)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (32, 64)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (64, 10)).astype(np.float32), "w2")])

    def loud(count: int, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        gain = 10.0 ** r.uniform(-2, 2, (count, 1, 1))
        return (r.normal(0, 1, (count, 1, 32)) * gain).astype(np.float32)

    feeds = [{"x": row} for row in loud(96, 1)]
    model, report, guard = quantize_guarded(ir.from_proto(proto), feeds, cpu="avx2", time_limit_s=120)
    names = [r.name for r in guard.rungs]
    assert not guard.rungs[0].within_floor, guard.lines()
    assert guard.chosen == DYNAMIC_RUNG and guard.within_floor, guard.lines()
    assert report.mode == "dynamic"
    assert names.index(DYNAMIC_RUNG) > names.index("plain (minmax)")
    ops = {n.op_type for n in model.graph}
    assert "QuantizeLinear" not in ops and ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}
    held = loud(200, 7)[:, 0]
    assert _agreement(ir.from_proto(proto), model, held[:, None]) >= 0.97


def test_a_close_call_between_float_and_int8_is_timed_head_to_head(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq.quantization import guard as g
    from onnxq.validation import bench

    def rung(name: str, ok: bool, speedup: float) -> tuple[g.Rung, str, SimpleNamespace]:
        return g.Rung(name, ok, "", speedup, 1.0), name, SimpleNamespace(self_check=None)

    timed: list[float] = []

    def fake_times(runners, **_: object) -> list[list[float]]:
        timed.append(ratio)
        return [[1.0] * 15, [1.0 / ratio] * 15]  # float's seconds, the quantized model's seconds

    monkeypatch.setattr(bench, "interleaved_times", fake_times)
    monkeypatch.setattr(bench, "session", lambda model, **_: SimpleNamespace(run=lambda *a: None))
    monkeypatch.setattr("onnxq.runtime.select_inputs", lambda model, feed: feed)

    def settle(q_speed: float, f_speed: float, recovered: bool = False) -> str:
        plain = rung("plain", True, q_speed)
        floating = rung(g.FLOAT_RUNG, True, f_speed)
        results = [plain, floating]
        first = rung("plain0", False, 2.0)[0] if recovered else plain[0]
        chosen, rival = g.choose(results, floating[0], first)
        return g.settle_close_call(chosen, rival, results, floating[0], first, {"x": 0})[0][1]

    # 1.06x against 1.01x from two separate runs: the head-to-head run decides, with choose's margins
    ratio = 0.90
    assert settle(1.06, 1.01) == g.FLOAT_RUNG and timed == [0.90]
    ratio = 1.00
    assert settle(1.06, 1.01) == "plain"  # a tie goes to the smaller, quantized model
    ratio = 1.03
    assert settle(1.06, 1.01, recovered=True) == g.FLOAT_RUNG  # a recovered result must win by 5 %
    # far apart: no second timing
    timed.clear()
    assert settle(1.60, 1.01) == "plain" and timed == []


def test_mixed_precision_aims_above_the_sqnr_floor() -> None:
    # Its cosine budget maps to SQNR only about; a budget at the floor landed on its edge (YOLOX on
    # AVX2 kernels: drop 0.0049 of 0.005, 19.9 dB on the held-back samples, below the 20 dB floor).
    from onnxq.quantization.guard import MIXED_MARGIN_DB, _mixed_budget
    from onnxq.validation.self_check import SQNR_FLOOR_DB, TOP1_FLOOR

    at_floor = 0.5 * 10 ** (-SQNR_FLOOR_DB / 10)
    assert MIXED_MARGIN_DB > 0 and _mixed_budget(None) < at_floor * 0.85
    sqnr_equivalent = -10 * np.log10(2 * _mixed_budget(None))
    assert sqnr_equivalent == pytest.approx(SQNR_FLOOR_DB + MIXED_MARGIN_DB)
    # Agreement budgets count decisions on the same samples as the floor: no margin there.
    top1 = SimpleNamespace(outputs=[SimpleNamespace(top1_agreement=1.0, sequence_agreement=None)])
    assert _mixed_budget(top1) == pytest.approx(1.0 - TOP1_FLOOR)


def test_the_kept_report_counts_the_plain_rungs_held_back_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every rung is judged on the plain rung's held-back samples; the report of a kept float result
    # (its own call calibrates nothing and holds nothing back) used to say 0 held back.
    import onnxq.quantization.guard as guard_module

    monkeypatch.setattr(guard_module, "float_still_needed", lambda rungs, float_ms: True)
    monkeypatch.setattr(guard_module, "choose", lambda results, floating, plain=None: (
        next(x for x in results if x[0] is floating), None))
    feeds = [{"x": row} for row in _fragile.samples(96)["x"]]
    _, report, guard = quantize_guarded(_fragile.model(), feeds, cpu="avx2", time_limit_s=60)
    assert guard.chosen == FLOAT_RUNG
    assert (report.calibration_samples, report.holdout_samples) == (72, 24)
    assert report.self_check is not None and report.self_check.samples == 24
