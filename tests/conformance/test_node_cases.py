"""Conformance: every onnx node test case, through every cleanup pass and the cleanup preset.

The harness lives in ``tools/conformance.py`` (also a command that prints the
pass/total table). A case counts when its untouched model passes on onnxruntime
CPU; the result of each pass must pass the onnx checker, keep the input/output
signature and reproduce the expected outputs within the case's tolerance.

One test per pipeline runs all cases and lists every failure; library bugs found
so far are in ``KNOWN_BUGS`` and run one by one as strict xfails.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from onnxq.framework.registry import PassRegistry

TOOL = Path(__file__).resolve().parents[2] / "tools" / "conformance.py"

#: Lower bounds so the check cannot pass on (almost) nothing: onnx 1.23 ships 1884 node
#: cases, of which 1740 pass untouched on onnxruntime 1.32 CPU.
MIN_CASES = 1800
MIN_RUNNABLE = 1500


def _load_tool() -> ModuleType:
    name = "onnxq_conformance_tool"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


conformance = _load_tool()


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    return PassRegistry.default()


@pytest.fixture(scope="module")
def all_cases() -> list:
    return conformance.collect_cases()


@pytest.fixture(scope="module")
def runnable(all_cases: list) -> list:
    ok, _baseline_failures = conformance.runnable_cases(all_cases)
    return ok


def test_enough_cases_run(all_cases: list, runnable: list) -> None:
    assert len(all_cases) >= MIN_CASES, f"only {len(all_cases)} onnx node test cases collected"
    # A broken harness (feeds, comparison) would turn most cases into baseline failures.
    assert len(runnable) >= MIN_RUNNABLE, (
        f"only {len(runnable)} of {len(all_cases)} cases pass untouched on onnxruntime"
    )


def test_exclusions_and_known_bugs_are_documented(all_cases: list, runnable: list) -> None:
    names = {c.name for c in all_cases}
    runnable_names = {c.name for c in runnable}
    pipelines = set(conformance.PIPELINES)
    problems = []
    for table, entries in (("EXCLUDED", conformance.EXCLUDED), ("KNOWN_BUGS", conformance.KNOWN_BUGS)):
        for key, reason in entries.items():
            pipeline, _, case = key.rpartition(":")
            if not (isinstance(reason, str) and reason.strip()):
                problems.append(f"{table}[{key!r}] has no reason")
            if case not in names:
                problems.append(f"{table}[{key!r}] names no onnx node test case")
            elif case not in runnable_names:
                problems.append(f"{table}[{key!r}]: the untouched model no longer passes on ORT")
            if (pipeline or table == "KNOWN_BUGS") and pipeline not in pipelines:
                problems.append(f"{table}[{key!r}] names no checked pipeline")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pipeline", conformance.PIPELINES)
def test_pipeline_keeps_semantics(pipeline: str, runnable: list, registry: PassRegistry) -> None:
    cases = [c for c in runnable if f"{pipeline}:{c.name}" not in conformance.KNOWN_BUGS]
    report = conformance.run_pipeline(pipeline, cases, registry)
    assert report.total >= MIN_RUNNABLE - len(conformance.KNOWN_BUGS), (
        f"{pipeline}: only {report.total} cases ran"
    )
    failures = report.failures
    message = "\n".join(f"  {f.case}: {f.error}" for f in failures)
    assert not failures, (
        f"{pipeline}: {len(failures)} of {report.total} onnx node test cases fail:\n{message}"
    )


def test_known_bugs_still_fail(all_cases: list, registry: PassRegistry) -> None:
    """Each KNOWN_BUGS entry must still fail; a fixed bug is removed from the list."""
    fixed = []
    for key in sorted(conformance.KNOWN_BUGS):
        pipeline, _, name = key.partition(":")
        (case,) = [c for c in all_cases if c.name == name]
        if conformance.check_pipeline(case, pipeline, registry) is None:
            fixed.append(key)
    assert not fixed, f"fixed, remove from KNOWN_BUGS: {fixed}"


# --- old-opset exports (PyTorch legacy exporter at 10-13, tf2onnx at 11 and 13) ----------


@pytest.fixture(scope="module")
def legacy() -> list:
    return conformance.legacy_cases()


@pytest.mark.slow
def test_legacy_exports_pass_untouched(legacy: list) -> None:
    # The baseline compares onnxruntime with PyTorch / TensorFlow: every export must pass it.
    assert len(legacy) == 10
    ok, failed = conformance.runnable_cases(legacy)
    assert not failed, failed
    assert {case.model.opset_import[0].version for case in ok} >= {10, 11, 12, 13}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", conformance.PIPELINES)
def test_legacy_exports_keep_semantics(pipeline: str, legacy: list, registry: PassRegistry) -> None:
    report = conformance.run_pipeline(pipeline, legacy, registry)
    assert report.total == len(legacy)
    message = "\n".join(f"  {f.case}: {f.error}" for f in report.failures)
    assert not report.failures, f"{pipeline}: old-opset exports fail:\n{message}"
