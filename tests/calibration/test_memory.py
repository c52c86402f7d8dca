"""Calibration memory does not grow with the number of samples (issue 9 guarantee).

Each measurement runs in a child process reading a folder of .npz files; the child's peak RSS
(``VmHWM`` of its own address space, read by the child at the end: ``ru_maxrss`` would include
the pytest parent's pages the child had before ``exec``) at 1000 samples must be within 15% of the
peak at 100. Keeping the activations (as onnxruntime's histogram calibrators do) would add about
1000 x 0.27 MB here (more than the baseline of the interpreter and onnxruntime), so the test can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

CHILD = """
import json, sys
import onnx_ir as ir
from onnxq.calibration import calibrate
model = ir.load(sys.argv[1])
ranges = calibrate(model, sys.argv[2], method=sys.argv[3])
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"samples": ranges.samples, "tensors": len(ranges), "peak_kib": hwm}))
"""


def _conv_model(path: Path) -> None:
    """Conv(3->16) -> Relu -> Conv(16->16) -> Relu on 1x3x32x32: ~0.27 MB of activations a sample."""
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2, "w1")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2")
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c2"], ["y"]),
        ],
        "convs",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16, 32, 32])],
        [w1, w2],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _peak_rss_kib(model: Path, folder: Path, method: str) -> int:
    """Peak RSS of one calibration child in KiB (its VmHWM)."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(folder), method], capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["samples"] == len(list(folder.glob("*.npz")))
    return int(report["peak_kib"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_peak_rss_at_1000_samples_is_within_15_percent_of_100(tmp_path: Path, method: str) -> None:
    model = tmp_path / "convs.onnx"
    _conv_model(model)
    rng = np.random.default_rng(1)
    small, large = tmp_path / "s100", tmp_path / "s1000"
    small.mkdir()
    large.mkdir()
    for i in range(1000):
        # Later samples have a wider range, so the histograms re-bin along the way.
        x = (rng.standard_normal((1, 3, 32, 32)) * (1 + i / 100)).astype(np.float32)
        np.savez(large / f"{i:04d}.npz", x=x)
        if i < 100:
            np.savez(small / f"{i:04d}.npz", x=x)
    peak_100 = _peak_rss_kib(model, small, method)
    peak_1000 = _peak_rss_kib(model, large, method)
    print(f"calibration peak RSS ({method}): {peak_100} KiB at 100 samples, {peak_1000} KiB at 1000")
    assert peak_1000 <= 1.15 * peak_100, f"peak RSS {peak_1000} KiB at 1000 samples vs {peak_100} KiB at 100"
