"""tools/bench_recovery.py: the pure helpers of the recovery table (measures, noise, report)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # NOTE: tools/ is a folder of scripts, not installed

import bench_recovery as br  # noqa: E402


def test_each_output_kind_gets_its_measure() -> None:
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=(1, 5)) for _ in range(4)]
    for s in scores:
        s[0, np.argmax(s)] += 3.0  # FP32 decided (a change within 2:1 would be a tie, not a disagreement)
    flipped = [s.copy() for s in scores]
    flipped[0][0, np.argmax(scores[0])] = -10  # one decision of four changes
    cls = br.score_output("p", "class_scores", scores, flipped)
    assert cls.agreement == pytest.approx(0.75) and cls.measure == "top-1 75.0%"

    steps = np.full((1, 6, 4), -5.0)
    steps[0, [0, 1, 3], 1] = 5.0  # "1 _ 1" with blank 0 elsewhere
    steps[0, [2, 4, 5], 0] = 5.0
    other = steps.copy()
    other[0, 2, 0], other[0, 2, 1] = -5.0, 5.0  # the gap closes: "1" instead of "1 1"
    same = br.score_output("s", "ctc_sequence", [steps, steps], [steps, steps])
    changed = br.score_output("s", "ctc_sequence", [steps, steps], [steps, other])
    assert same.agreement == 1.0 and changed.agreement == pytest.approx(0.5)
    assert changed.measure == "seq 50.0%"

    ref = [np.ones((1, 8))]
    noisy = [np.ones((1, 8)) * 1.1]
    reg = br.score_output("r", "regression", ref, noisy)
    assert reg.agreement is None and reg.sqnr_db == pytest.approx(20.0)
    assert reg.cosine == pytest.approx(1.0) and reg.measure == "20.0 dB"


def test_a_wrong_shape_or_nan_scores_as_worst_possible() -> None:
    bad = br.score_output("x", "class_scores", [np.ones((1, 3))], [np.ones((1, 4))])
    assert bad.agreement == 0.0 and bad.sqnr_db == -math.inf
    nan = br.score_output("x", "detection", [np.ones((1, 3))], [np.full((1, 3), np.nan)])
    assert nan.sqnr_db == -math.inf and nan.agreement is None


def test_worst_output_prefers_the_lowest_agreement_then_sqnr() -> None:
    a = br.OutputScore("a", "probabilities", 30.0, 0.999)
    b = br.OutputScore("b", "embedding", 12.0, 0.97)
    assert br.worst([a, b]).name == "b"
    c = br.OutputScore("c", "class_scores", 40.0, 0.9999, agreement=0.98)
    assert br.worst([a, b, c]).name == "c"


def test_accuracy_control_metric_is_one_for_fp32_and_the_worst_output_otherwise() -> None:
    refs = [[np.array([[0.1, 0.9]]), np.ones((1, 4))], [np.array([[0.8, 0.2]]), np.ones((1, 4))]]
    assert br.ac_metric(["class_scores", "regression"], refs, refs) == pytest.approx(1.0)
    gots = [[np.array([[0.9, 0.1]]), np.ones((1, 4))], [np.array([[0.8, 0.2]]), np.ones((1, 4))]]
    assert br.ac_metric(["class_scores", "regression"], refs, gots) == pytest.approx(0.5)


def test_speedup_interval_says_when_the_difference_is_noise() -> None:
    rng = np.random.default_rng(1)
    base = 1.0 + 0.05 * rng.random(40)
    same = 1.0 + 0.05 * rng.random(40)
    point, low, high = br.speedup_interval(base, same)
    assert low <= 1.0 <= high and br.speed_text(point, low, high).endswith("(within noise)")
    point, low, high = br.speedup_interval(base, base / 2)
    assert point == pytest.approx(2.0, rel=0.05) and low > 1.0
    assert br.speed_text(point, low, high) == f"{point:.2f}x"
    assert br.speedup_interval([1.0, 1.0], [0.5, 0.5]) == (2.0, 2.0, 2.0)  # too few rounds


def test_lists_reduce_range_and_error_tails() -> None:
    assert br.parse_list(None, ["a", "b"], "models") == ["a", "b"]
    assert br.parse_list("b, a", ["a", "b"], "models") == ["b", "a"]
    with pytest.raises(SystemExit, match="unknown models: c"):
        br.parse_list("a,c", ["a", "b"], "models")
    assert br.reduce_range_for("avx2") and not br.reduce_range_for("vnni") and not br.reduce_range_for("arm64")
    stderr = "warning: x\nTraceback (most recent call last):\n  File \"a.py\", line 1\n    f()\nValueError: boom\n"
    assert br.error_tail(stderr, lines=2) == "    f()\nValueError: boom"
    assert br.error_tail("just one line\n") == "just one line"


def test_run_tool_measures_and_kills_at_the_timeout() -> None:
    done = br.run_tool([sys.executable, "-c", "import sys; b = bytearray(64 << 20); print('ok'); sys.exit(3)"],
                       timeout_s=60)
    assert done.returncode == 3 and not done.timed_out and done.stdout.strip() == "ok"
    assert done.rss_mib is not None and done.rss_mib > 60
    slow = br.run_tool([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"],
                       timeout_s=1.5)
    assert slow.timed_out and slow.returncode is None and slow.wall_s < 10
    assert slow.rss_mib is not None and slow.rss_mib > 60  # VmHWM polled before the kill


def test_run_tool_does_not_count_this_process_memory() -> None:
    held = np.ones(512 << 17)  # NOTE: 512 MiB resident here, which a forked child shares until exec
    small = br.run_tool([sys.executable, "-c", "pass"], timeout_s=60)
    assert held.sum() > 0 and small.rss_mib is not None and small.rss_mib < 100


def test_notes_read_the_guard_and_the_recovery_statistics() -> None:
    guard = {"guard": {"chosen": "recovery (smooth-quant, correct-bias)", "within_floor": True, "rungs": [
        {"name": "plain (minmax)", "fidelity": "y: top-1 90.0%", "within_floor": False},
        {"name": "recovery (smooth-quant, correct-bias)", "fidelity": "y: top-1 99.5%", "within_floor": True}]}}
    note = br._note("onnxq-guard", json.dumps(guard, indent=2))
    assert note.startswith("kept 'recovery (smooth-quant, correct-bias)' [plain (minmax): top-1 90.0% (below)")
    stats = json.dumps({"stats": {"smooth-quant.activations_smoothed": 3, "smooth-quant.x": 10**20}})
    assert br._note("onnxq-sq", "log line\n" + stats) == "activations_smoothed=3, x=1e+20"
    assert br._note("onnxq-bc", json.dumps({"stats": {}})) == "pass changed nothing"
    assert br._note("onnxq-guard", "not json") == ""


def test_table_rows_show_the_worst_output_and_errors() -> None:
    scores = [br.OutputScore("p", "probabilities", 31.0, 0.9996), br.OutputScore("s", "embedding", 18.5, 0.993)]
    rows = [
        {"model": "m", "method": "fp32", "eval_n": 4, "scores": scores, "ms": 2.0, "speed": (1.0, 1.0, 1.0),
         "wall_s": None, "rss_mib": None, "valid": True, "why": "", "note": ""},
        {"model": "m", "method": "nncf", "eval_n": 4, "scores": scores, "ms": 1.0, "speed": (2.0, 1.8, 2.2),
         "wall_s": 3.21, "rss_mib": 120.4, "valid": True, "why": "", "note": "a|b"},
        {"model": "m", "method": "nncf-ac", "eval_n": 4, "wall_s": 600.0, "rss_mib": 300.0, "valid": None,
         "why": "", "error": "timeout after 600 s", "note": ""},
    ]
    fp32, nncf, timeout = br.table_rows(rows)
    assert fp32[3] == "exact (reference)" and fp32[7] == "1.00x (reference)" and fp32[4] == "-"
    assert nncf[3] == "18.5 dB [s]" and nncf[4] == "18.5" and nncf[5] == "0.99300"
    assert nncf[7] == "2.00x" and nncf[8] == "3.2" and nncf[9] == "120" and nncf[11] == "a/b"
    assert timeout[3] == "-" and timeout[10] == "-" and timeout[11] == "timeout after 600 s"


def test_guard_fidelity_loses_output_names_but_keeps_figures() -> None:
    assert br._unnamed("y: top-1 90.0%") == "top-1 90.0%"
    assert br._unnamed("StatefulPartitionedCall:0: 20.1 dB, out: 31.0 dB") == "20.1 dB, 31.0 dB"
    assert br._unnamed("float") == "float"
