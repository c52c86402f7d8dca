"""The CLI contract: exit codes, one-line user errors, --json, outputs only at -o."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxq import runtime
from onnxq.cli import main
from onnxq.ir.io import load_model


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_cleanup_json(small_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "clean.onnx"
    out.parent.mkdir()
    before = _digest(small_path)
    assert main(["run", str(small_path), "-p", "cleanup", "-o", str(out), "--json", "--timing"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == "cleanup" and report["modified"] is True
    assert report["stats"]["remove-identity.identities_removed"] == 2
    assert set(report["timing"]) >= {"fold-constants", "eliminate-dead-code"}
    assert _digest(small_path) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.onnx"]
    feeds = {"x": np.ones((2, 8), np.float32)}
    assert not runtime.compare(runtime.run(load_model(small_path), feeds), runtime.run(load_model(out), feeds))


def test_run_with_all_instrumentation_and_toml(small_path: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\npasses = ["cleanup", {name = "topological-sort"}]\n')
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    out = tmp_path / "o.onnx"
    code = main(["run", str(small_path), "-p", str(toml), "-o", str(out), "--verify-each",
                 "--numeric-check-each", "--inputs", str(inputs), "--dump-after-change", str(tmp_path / "d")])
    assert code == 0
    text = capsys.readouterr().out
    assert "numeric check: outputs unchanged" in text
    assert (tmp_path / "d" / "001-infer-shapes.onnx").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{model}", "-p", "fold-constant", "-o", "{tmp}/o.onnx"], "did you mean 'fold-constants'"),
        (["run", "{model}", "-p", "cleanup", "-o", "{model}"], "refusing to overwrite the input"),
        (["run", "{tmp}/missing.onnx", "-p", "cleanup", "-o", "{tmp}/o.onnx"], "no such file"),
        (["run", "{model}", "-p", "cleanup", "-o", "{tmp}/nodir/o.onnx"], "does not exist"),
        (["run", "{model}", "-p", "fold-constants{bad=1}", "-o", "{tmp}/o.onnx"], "has no option 'bad'"),
        (["run", "{model}", "-p", "{tmp}/none.toml", "-o", "{tmp}/o.onnx"], "pipeline file not found"),
        (["inspect", "{tmp}"], "is a folder"),
        (["run", "{model}", "-o", "{tmp}/o.onnx"], "required: -p/--pipeline"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_exit_2_with_one_line(small_path: Path, tmp_path: Path, args, message, capsys) -> None:
    argv = [a.replace("{model}", str(small_path)).replace("{tmp}", str(tmp_path)) for a in args]
    # NOTE: argparse's own errors leave by SystemExit(2), ours return 2: both must say 2.
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_in_place_rewrites_the_input_when_asked(small_path: Path) -> None:
    assert main(["run", str(small_path), "-p", "cleanup", "-o", str(small_path), "--in-place"]) == 0
    assert [n.op_type for n in load_model(small_path).graph] == ["Mul", "Add"]


def test_inspect_json(small_path: Path, capsys) -> None:
    assert main(["inspect", str(small_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["opsets"] == {"ai.onnx": 18}
    assert info["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 8], "dynamic_dims": ["N"]}]
    assert info["ops"]["Constant"] == 2
    assert info["nodes"] == 9


def test_inspect_text(small_path: Path, capsys) -> None:
    assert main(["inspect", str(small_path)]) == 0
    out = capsys.readouterr().out
    assert "Identity" in out and "[N, 8]" in out


def test_passes_lists_builtins_and_presets(capsys) -> None:
    assert main(["passes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in info["passes"]}
    assert {"infer-shapes", "fold-constants", "eliminate-dead-code", "remove-identity",
            "eliminate-common-subexpressions", "topological-sort", "convert-opset", "graphsurgeon"} <= names
    cleanup = next(p for p in info["presets"] if p["name"] == "cleanup")
    assert cleanup["fixpoint"] and "fold-constants" in cleanup["passes"]


def test_internal_failure_exits_1_without_traceback(small_path: Path, tmp_path: Path, capsys) -> None:
    # A numeric check failure (a failed check) is exit 1: feed inputs of the wrong rank.
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((2, 8, 1), np.float32))
    code = main(["run", str(small_path), "-p", "cleanup", "-o", str(tmp_path / "o.onnx"),
                 "--numeric-check-each", "--inputs", str(bad)])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_and_debug_traceback(small_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ONNXQ_NO_PLUGINS": "1"}
    proc = subprocess.run([sys.executable, "-m", "onnxq", "--debug", "run", str(small_path), "-p", "nope",
                           "-o", str(tmp_path / "o.onnx")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "unknown pass 'nope'" in proc.stderr
