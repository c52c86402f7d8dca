"""check: each rule has a graph that breaks it (the finding names the node) and a clean graph passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxq.validation.check import check
from tests.validation._graphs import FUSES, RELU_ZP128, _ints

GEMM = f"""
<ir_version: 10, opset_import: ["" : 13]>
g (float[2,8] x) => (float[2,4] y) <
  float s = {{0.05}}, uint8 zp = {{128}}, int8[8,4] w = {{{_ints(32)}}}, float ws = {{0.01}}, int8 wzp = {{0}},
  int32[4] b = {{10, 20, -30, 40}}, float bs = {{0.0005}}, int32 bzp = {{0}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  bd = DequantizeLinear(b, bs, bzp)
  gm = Gemm(xd, wd, bd)
  gq = QuantizeLinear(gm, s, zp)
  y = DequantizeLinear(gq, s, zp)
}}
"""
PER_CHANNEL = ("float ws = {0.01}, int8 wzp = {0}",
               "float[4] ws = {0.01, 0.01, 0.02, 0.02}, int8[4] wzp = {0, 0, 0, 0}")


def _save(tmp_path: Path, text: str, **arrays: np.ndarray) -> Path:
    proto = onnx.parser.parse_model(text)
    for init in proto.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(onnx.numpy_helper.from_array(arrays[init.name], init.name))
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    return path


def _findings(tmp_path: Path, text: str, **arrays: np.ndarray) -> set[tuple[str, str | None]]:
    report = check(_save(tmp_path, text, **arrays))
    return {(f.rule, f.node) for f in report.violations}


@pytest.mark.parametrize("text", [GEMM, GEMM.replace(*PER_CHANNEL).replace("wd = DequantizeLinear(",
                                                                          "wd = DequantizeLinear <axis=1> ("), FUSES])
def test_clean_graphs_pass(tmp_path: Path, text: str) -> None:
    report = check(_save(tmp_path, text))
    assert report.ok, report.lines()
    assert report.fusion is not None and not report.fusion.unfused


@pytest.mark.parametrize(
    ("old", "new", "arrays", "rule", "node"),
    [
        ("float ws = {0.01}", "float ws = {0.0}", {}, "qdq-scale", "DequantizeLinear_2"),
        ("float s = {0.05}", "float s = {-0.05}", {}, "qdq-scale", "QuantizeLinear_0"),
        ("", "", {"ws": np.array(np.inf, np.float32)}, "qdq-scale", "DequantizeLinear_2"),
        ("int32 bzp = {0}", "int32 bzp = {5}", {}, "qdq-zero-point", "DequantizeLinear_3"),
        ("wd = DequantizeLinear(w, ws, wzp)", "wd = DequantizeLinear(w, ws, zp)", {}, "qdq-zero-point",
         "DequantizeLinear_2"),
        ("xd = DequantizeLinear(xq, s, zp)", "xd = DequantizeLinear(xq, ws, zp)", {}, "qdq-pair", "DequantizeLinear_1"),
        ("int32[4] b = {10, 20, -30, 40}", "int32[4] b = {2147483647, 20, -30, 40}", {}, "int32-bias",
         "DequantizeLinear_3"),
        ("float bs = {0.0005}", "float bs = {0.001}", {}, "int32-bias", "DequantizeLinear_3"),
        ("gm = Gemm(", "gm = Gemm <bogus = 1> (", {}, "onnx-checker", None),
        ("int8[8,4] w = {" + _ints(32) + "}", "int8[7,4] w = {" + _ints(28) + "}", {}, "shape-inference", None),
        ("int32 bzp = {0}>", "int32 bzp = {0}, float[3] unused = {1, 2, 3}>", {}, "unused-initializer", None),
        ("float[2,8] x)", "float[2,8] x, float[2] extra)", {}, "unused-input", None),
        ("<ir_version: 10,", "<ir_version: 6,", {}, "opset", None),
        ("float s = {0.05},", "float s = {0.05}, float[2] tiny = {1e-40, 0}, float[3] nan3 = {1, 2, 3},",
         {"nan3": np.array([1, np.nan, 3], np.float32)}, "initializer-nan-inf", None),
    ],
)
def test_each_rule_names_the_culprit(tmp_path: Path, old: str, new: str, arrays: dict, rule: str,
                                     node: str | None) -> None:
    found = _findings(tmp_path, GEMM.replace(old, new), **arrays)
    assert (rule, node) in found, found
    # The unchanged graph does not break the rule.
    assert not {f for f in _findings(tmp_path, GEMM) if f[0] == rule}


def test_denormal_initializer_is_a_warning(tmp_path: Path) -> None:
    text = GEMM.replace("float s = {0.05},", "float s = {0.05}, float[2] tiny = {1e-40, 0},")
    findings = [f for f in check(_save(tmp_path, text)).findings if f.rule == "initializer-denormal"]
    assert len(findings) == 1 and "'tiny'" in findings[0].message and findings[0].severity == "warning"


@pytest.mark.parametrize(
    ("axis", "opset", "message"),
    [(0, 13, "axis 0 has 8 channels but the scale has 4 values"),
     (2, 13, "axis 2 is out of range for a rank-2 tensor"),
     (1, 12, "needs opset >= 13")],
)
def test_per_channel_axis(tmp_path: Path, axis: int, opset: int, message: str) -> None:
    text = GEMM.replace(*PER_CHANNEL).replace('"" : 13', f'"" : {opset}').replace(
        "wd = DequantizeLinear(", f"wd = DequantizeLinear <axis={axis}> (")
    report = check(_save(tmp_path, text))
    hits = [f for f in report.findings if f.rule == "qdq-axis"]
    assert hits and hits[0].node == "DequantizeLinear_2" and message in hits[0].message, report.lines()


def test_ort_cpu_rule_names_group_that_stays_float(tmp_path: Path) -> None:
    report = check(_save(tmp_path, RELU_ZP128))
    [finding] = report.violations
    assert (finding.rule, finding.node) == ("ort-cpu-unfused", "Conv_3")
    assert "zero point 128 after Relu" in finding.message and "only add time" in finding.message


def test_float_model_is_clean_and_in_memory_models_work() -> None:
    from onnxq.examples import example_model_path
    from onnxq.ir.io import load_model

    report = check(load_model(example_model_path()))
    assert report.ok and report.fusion is None


def test_external_data_model_is_checked_in_place(tmp_path: Path) -> None:
    from onnxq.examples import example_model_path
    from onnxq.ir.io import load_model, save_model

    path = tmp_path / "ext.onnx"
    save_model(load_model(example_model_path()), path, external_data=True)
    assert check(path).ok


def test_float_model_onnxruntime_cannot_run_is_named(tmp_path: Path) -> None:
    # Valid ONNX, but onnxruntime has no CPU kernel for a uint8 Sin.
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (uint8[4] x) => (uint8[4] y) { y = Sin(x) }
    """
    report = check(_save(tmp_path, text))
    rules = {f.rule for f in report.violations}
    assert "ort-cpu-load" in rules, report.lines()


def test_in_memory_model_with_external_data(tmp_path: Path) -> None:
    from onnxq.examples import example_model_path
    from onnxq.ir.io import load_model, save_model

    save_model(load_model(example_model_path()), tmp_path / "ext.onnx", external_data=True)
    assert check(load_model(tmp_path / "ext.onnx")).ok
