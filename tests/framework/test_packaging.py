"""Packaging contract: ranges in pyproject.toml, the tested set in constraints.txt, one test command.

Installing onnxq must not rewrite a user's versions (no exact pins in the core
dependencies), every pin in constraints.txt must lie inside the declared ranges
(else ``pip install -c constraints.txt -e '.[all]'`` cannot resolve), the running
environment is that set, and the README's test command is ``bash .ci/run``.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _requirements() -> list[Requirement]:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("onnxq[")]
    return reqs


def test_core_dependencies_are_ranges_not_pins() -> None:
    for req in (Requirement(r) for r in _project()["dependencies"]):
        assert all(s.operator != "==" for s in req.specifier), f"{req} pins the user's environment"


def test_every_pin_lies_inside_the_declared_ranges() -> None:
    pins = _pins()
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"


def test_all_extra_installs_reports_and_test_tools() -> None:
    names = {canonicalize_name(r.name) for r in _requirements()}
    assert {"matplotlib", "scikit-learn", "pytest", "ray"} <= names
    assert "onnxq[torch,tf,report,dev,qnn,ray]" in _project()["optional-dependencies"]["all"]
    # NOTE: the HTP simulator, so --target qnn's offload tests run in CI
    assert any(r.startswith("onnxruntime-qnn") for r in _project()["optional-dependencies"]["qnn"])


@pytest.mark.parametrize(
    "name", ["onnx", "onnxruntime", "onnx-ir", "onnxscript", "onnx-graphsurgeon", "numpy", "torch", "tf2onnx"]
)
def test_this_environment_is_the_pinned_set(name: str) -> None:
    try:
        installed = Version(version(name))
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed; install with -c constraints.txt")
    # NOTE: the CPU torch wheel carries a local label (2.13.0+cpu); the release is what is pinned.
    assert Version(installed.base_version) == _pins()[canonicalize_name(name)]


def test_readme_test_command_is_ci() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^Tests — .*?```bash\n(.*?)\n```", readme, re.MULTILINE | re.DOTALL)
    assert blocks == ["bash .ci/run"], blocks
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line and not line.startswith("#")]
    # the install with the pinned set, then the suite, last and unguarded (set -e fails the run)
    assert "set -euo pipefail" in ci
    assert ci[-2:] == ["python3 -m pip install -c constraints.txt -e '.[all]'", "python3 -m pytest -q"]
