"""``onnxq check --target nnapi|coreml`` agrees with onnxruntime's mobile usability checker."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
from onnxruntime.tools.mobile_helpers import usability_checker

from onnxq.cli import main
from onnxq.examples import example_model_path
from onnxq.targets import mobile

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402

_LINE = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+) EP\.")


def _ort_says(path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, list[tuple[int, int, int]]]:
    """EP -> [(partitions, supported, nodes) as is, then with fixed shapes when it checked that]."""
    logger = logging.getLogger("onnxq-test-usability")
    logger.setLevel(logging.INFO)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger.name):
        usability_checker.analyze_model(path, logger=logger)
    found: dict[str, list[tuple[int, int, int]]] = {}
    for record in caplog.records:
        m = _LINE.search(record.getMessage())
        if m:
            found.setdefault(m.group(4), []).append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return found


@pytest.mark.slow
def test_partitions_agree_with_onnxruntime_on_every_zoo_model(caplog: pytest.LogCaptureFixture) -> None:
    manifest = zoo.ensure_built()
    paths = [zoo.model_path(name) for name in sorted(manifest)] + [example_model_path()]
    for path in paths:
        ort = _ort_says(path, caplog)
        for target, (ep, _, _) in mobile.EPS.items():
            ours = mobile.partitions(path, target)
            first, *fixed = ort[ep]
            assert (ours.partitions, ours.supported, ours.nodes) == first, (path.name, target)
            if fixed:
                assert ours.fixed_shapes == fixed[0][:2][::-1], (path.name, target)
            # every node left to the CPU is named once, with a reason
            assert len(ours.unsupported) == ours.nodes - ours.supported, (path.name, target)
            assert all(u.reason for u in ours.unsupported)


def test_check_names_each_node_left_to_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the example CNN has a dynamic batch: NNAPI takes nothing as is, everything once the shape is fixed
    assert main(["check", str(example_model_path()), "--target", "nnapi", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    left = [f for f in doc["findings"] if f["rule"] == "nnapi-partitions" and f["severity"] == "warning"]
    assert left and all("dynamic shape" in f["message"] and f["node"] for f in left)
    [summary] = [f for f in doc["findings"] if f["rule"] == "nnapi-partitions" and f["severity"] == "info"]
    assert "0/10 nodes" in summary["message"] and "with fixed input shapes: 10/10 in 1" in summary["message"]
    # a fixed-shape copy runs wholly on NNAPI: no violation left
    import onnx

    proto = onnx.load(example_model_path())
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, fixed)
    assert main(["check", str(fixed), "--target", "nnapi"]) == 0
    assert "10/10 nodes in 1 partition" in capsys.readouterr().out
