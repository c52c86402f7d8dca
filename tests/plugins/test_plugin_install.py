"""The plugin template in passes/ installs, registers through its entry point and runs from the CLI.

The template is built from a copy (so passes/ gets no build/ or egg-info) and
installed with ``pip --target`` into a temporary folder that only the
subprocesses see on PYTHONPATH: the test environment is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "passes"
DIST = "onnxq-example-passes"

MODEL = """
<ir_version: 8, opset_import: ["" : 18]>
main (float[2, 4] x) => (float[2, 4] y) {
    a = Relu(x)
    d = Dropout(a)
    y = Sigmoid(d)
}
"""


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ONNXQ_NO_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["COLUMNS"] = "200"
    return env


def _onnxq(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxq", *args],
        env=_env(site), cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template installed (wheel build, no dependencies) into a private target folder."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(
        TEMPLATE, source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"),
    )
    target = work / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    dist_infos = list(target.glob("onnxq_example_passes-*.dist-info"))
    assert len(dist_infos) == 1
    assert "remove-dropout" in (dist_infos[0] / "entry_points.txt").read_text()
    return target


def test_installed_plugin_runs_from_the_cli(site: Path, tmp_path: Path) -> None:
    onnx.save(onnx.parser.parse_model(MODEL), tmp_path / "model.onnx")
    proc = _onnxq(site, "run", "model.onnx", "-p", "remove-dropout", "-o", "out.onnx", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["modified"] is True
    assert report["pipeline"] == "remove-dropout"
    assert report["stats"] == {"remove-dropout.dropouts_removed": 1}
    out = onnx.load(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node] == ["Relu", "Sigmoid"]
    onnx.checker.check_model(out, full_check=True)
    # Composes with built-in passes and reports nothing left to do on its own output.
    again = _onnxq(site, "run", "out.onnx", "-p", "remove-dropout,cleanup", "-o", "out2.onnx", "--json",
                   cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "remove-dropout.dropouts_removed" not in json.loads(again.stdout)["stats"]


def test_installed_plugin_is_listed_with_its_origin(site: Path, tmp_path: Path) -> None:
    proc = _onnxq(site, "passes", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    passes = {p["name"]: p for p in json.loads(proc.stdout)["passes"]}
    plugin = passes["remove-dropout"]
    assert plugin["plugin"] == DIST
    assert plugin["summary"].startswith("Remove inference-mode Dropout")
    assert [o["name"] for o in plugin["options"]] == ["assume_inference"]
    assert passes["fold-constants"]["plugin"] is None  # built-ins have no origin


def test_installed_plugin_origin_shows_in_the_table(site: Path, tmp_path: Path) -> None:
    table = _onnxq(site, "passes", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"[plugin: {DIST}]" in table.stdout


def test_plugins_can_be_disabled(site: Path, tmp_path: Path) -> None:
    env = _env(site) | {"ONNXQ_NO_PLUGINS": "1"}
    proc = subprocess.run([sys.executable, "-m", "onnxq", "passes", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "remove-dropout" not in {p["name"] for p in json.loads(proc.stdout)["passes"]}


def test_template_tests_pass_against_the_installed_package(site: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    shutil.copytree(TEMPLATE / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tests)],
        env=_env(site), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


#: A module a fake plugin can point at: a Pass that takes a built-in pass's name.
CLASH_MODULE = """
from onnxq import Pass, PassResult


class FoldConstants(Pass):
    name = "fold-constants"
    summary = "impostor"

    def run(self, model, ctx):
        return PassResult(False)
"""


def _fake_dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "onnxq_clash_plugin.py").write_text(CLASH_MODULE)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[onnxq.passes]\n" + entry_points)


@pytest.mark.parametrize(
    "entry_point, reason",
    [
        ("broken = onnxq_no_such_module:Nope\n", "No module named 'onnxq_no_such_module'"),
        ("not-a-pass = json:JSONDecoder\n", "is not an onnxq Pass subclass"),
        # A plugin may not take a built-in pass's name.
        ("clash = onnxq_clash_plugin:FoldConstants\n", "pass name 'fold-constants' is already registered"),
    ],
)
def test_broken_plugin_warns_and_does_not_break_the_tool(tmp_path: Path, entry_point: str, reason: str) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "broken-onnxq-plugin", entry_point)
    name = entry_point.split("=")[0].strip()
    proc = _onnxq(site, "passes", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"plugin '{name}' (broken-onnxq-plugin) not loaded" in proc.stderr
    assert reason in proc.stderr
    passes = {p["name"]: p for p in json.loads(proc.stdout)["passes"]}
    assert {"fold-constants", "eliminate-dead-code"} <= set(passes)
    assert name not in passes
    assert passes["fold-constants"]["plugin"] is None  # the built-in stays


def test_broken_plugin_does_not_break_run(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "broken-onnxq-plugin", "broken = onnxq_no_such_module:Nope\n")
    onnx.save(onnx.parser.parse_model(MODEL), tmp_path / "model.onnx")
    run = _onnxq(site, "run", "model.onnx", "-p", "cleanup", "-o", "out.onnx", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "plugin 'broken' (broken-onnxq-plugin) not loaded" in run.stderr
    assert json.loads(run.stdout)["modified"] is True
    unknown = _onnxq(site, "run", "model.onnx", "-p", "broken", "-o", "out2.onnx", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "unknown pass 'broken'" in unknown.stderr
