"""``onnxq sweep``: JSON with every strategy and a recommendation, HTML report, gate exit codes, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path

MODEL, DATA = str(example_model_path()), str(example_inputs_path())


def _args(out: Path, *extra: str) -> list[str]:
    return ["sweep", MODEL, "--calib", DATA, "--data", DATA, "--out-dir", str(out), "--latency-budget", "0.2",
            "--strategies", "dynamic,static-minmax", *extra]


def test_sweep_json_report_and_resume(tmp_path: Path, capsys) -> None:
    report = tmp_path / "sweep.html"
    code = main(_args(tmp_path / "out", "--jobs", "1", "--json", "--report", str(report), "--max-accuracy-drop",
                      "0.05"))
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    names = [s["name"] for s in doc["strategies"]]
    assert names == ["dynamic", "static-minmax"]
    for s in doc["strategies"]:
        assert {"accuracy", "p50_ms", "speedup", "size_bytes", "recommended"} <= set(s)
    [best] = [s for s in doc["strategies"] if s["recommended"]]
    assert best["passes"] and doc["gate"]["passed"] and doc["recommended"] == best["name"]
    text = report.read_text()
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', text)
    assert "http://" not in text and "https://" not in text and f"Recommended: {best['name']}." in text
    # Rerun: both strategies come from the cache.
    assert main(_args(tmp_path / "out", "-q", "--max-accuracy-drop", "0.05")) == 0
    assert capsys.readouterr().out.startswith(f"PASS: {best['name']} (accuracy drop")
    assert main(_args(tmp_path / "out", "--json")) == 0
    assert all(s["cached"] for s in json.loads(capsys.readouterr().out)["strategies"])


def test_gate_failure_exits_1_and_keeps_the_models(tmp_path: Path, capsys) -> None:
    code = main(_args(tmp_path, "--strategies", "static-minmax", "--min-speedup", "1000"))
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL: no strategy passes" in out.splitlines()[-1]
    assert (tmp_path / "static-minmax.onnx").is_file()


def test_list_and_user_errors(tmp_path: Path, capsys) -> None:
    assert main(["sweep", MODEL, "--list"]) == 0
    assert "static-entropy: static QDQ, entropy (KL) ranges" in capsys.readouterr().out
    assert main(_args(tmp_path, "--strategies", "nope")) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(["sweep", MODEL, "--calib", str(tmp_path / "none.npz"), "--data", DATA]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["sweep", MODEL, "--calib", DATA]) == 2
    assert "sweep needs --data PATH" in capsys.readouterr().err


def test_histogram_strategies_run_and_differ(tmp_path: Path, capsys) -> None:
    code = main(_args(tmp_path / "out", "--strategies", "static-entropy,static-mse,static-percentile", "--json",
                      "--jobs", "1"))
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {s["name"]: s for s in doc["strategies"]}
    assert sorted(rows) == ["static-entropy", "static-mse", "static-percentile"]
    for name, row in rows.items():
        assert row.get("error") is None, (name, row)
        assert row["accuracy"] is not None and row["accuracy"] >= 0.9, (name, row)
    # Each method gave its own ranges, hence its own scales: three different models.
    assert len({Path(row["path"]).read_bytes() for row in rows.values()}) == 3


def test_weight_only_int4_is_a_strategy_and_says_when_there_is_nothing_for_it(tmp_path: Path, capsys) -> None:
    # NOTE: the example CNN's classifier is a Gemm: it goes to 4 bits
    code = main(_args(tmp_path / "out", "--strategies", "weight-only-int4", "--json"))
    doc = json.loads(capsys.readouterr().out)
    [row] = doc["strategies"]
    assert code in (0, 1) and row["name"] == "weight-only-int4" and row.get("error") is None, row
    assert row["size_bytes"] < Path(MODEL).stat().st_size and row["accuracy"] >= 0.95, row


def test_weight_only_int4_names_a_model_it_cannot_help() -> None:
    import onnx_ir as ir
    import pytest

    from onnxq.errors import UserError
    from onnxq.validation.sweep import _weight_only_int4
    from tests.conftest import parse

    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }""")
    assert isinstance(model, ir.Model)
    with pytest.raises(UserError, match="nothing for 4-bit weights"):
        _weight_only_int4(model, [{"x": [[1.0, -1.0, 2.0, 0.5]]}])


def test_fp16_and_gptq_are_strategies_beside_int8(tmp_path: Path, capsys) -> None:
    """The Pareto report shows INT8, INT4 (GPTQ) and FP16 side by side."""
    code = main(_args(tmp_path / "out", "--strategies", "static-minmax,weight-only-int4-gptq,fp16", "--json"))
    doc = json.loads(capsys.readouterr().out)
    rows = {s["name"]: s for s in doc["strategies"]}
    assert code in (0, 1) and sorted(rows) == ["fp16", "static-minmax", "weight-only-int4-gptq"]
    for name, row in rows.items():
        assert row.get("error") is None and row["accuracy"] >= 0.95, (name, row)
    assert rows["fp16"]["size_bytes"] < 0.7 * Path(MODEL).stat().st_size  # NOTE: 43 KB: the graph itself stays
    assert not list((tmp_path / "out" / ".cache").glob("float16-probe*"))


def test_several_models_in_one_call(tmp_path: Path, capsys) -> None:
    """``sweep A B``: one result per model, '{stem}' naming each one's samples, folders and reports."""
    import shutil

    from onnxq.cli import main

    for stem in ("first", "second"):
        shutil.copy(MODEL, tmp_path / f"{stem}.onnx")
        shutil.copy(DATA, tmp_path / f"{stem}.npz")
    code = main(["sweep", str(tmp_path / "first.onnx"), str(tmp_path / "second.onnx"),
                 "--calib", str(tmp_path / "{stem}.npz"), "--data", str(tmp_path / "{stem}.npz"),
                 "--out-dir", str(tmp_path / "out"), "--strategies", "dynamic", "--latency-budget", "0.2",
                 "--report", str(tmp_path / "{stem}.md"), "--json"])
    docs = json.loads(capsys.readouterr().out)
    assert code == 0 and [Path(d["model"]).name for d in docs] == ["first.onnx", "second.onnx"]
    for doc, stem in zip(docs, ("first", "second"), strict=True):
        [row] = doc["strategies"]
        assert row["error"] is None and Path(row["path"]).parent == tmp_path / "out" / stem
        assert (tmp_path / f"{stem}.md").exists() and doc["report"] == str(tmp_path / f"{stem}.md")


def test_several_models_need_stem_in_the_report_path(tmp_path: Path, capsys) -> None:
    import shutil

    from onnxq.cli import main

    other = tmp_path / "other.onnx"
    shutil.copy(MODEL, other)
    code = main(["sweep", MODEL, str(other), "--calib", DATA, "--data", DATA, "--report", str(tmp_path / "r.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs '{stem}'" in err[0], err
    code = main(["sweep", MODEL, MODEL, "--calib", DATA, "--data", DATA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "share a file stem" in err[0], err
