"""Instrumentation: verify-each, numeric-check-each, dump-after-change, timing, graphsurgeon adapter."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.errors import NumericMismatchError, PassFailedError, VerificationError
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.framework.graphsurgeon_pass import GraphSurgeonPass
from onnxq.framework.instrumentation import DumpAfterChange, NumericCheckEach, Timing, VerifyEach
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.framework.registry import PassRegistry
from onnxq.ir.io import load_model


class _AddToSub(Pass):
    """A wrong 'optimization' that changes semantics."""

    name: ClassVar[str] = "add-to-sub"
    summary: ClassVar[str] = "test"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        changed = 0
        for node in model.graph:
            if node.op_type == "Add":
                node.op_type = "Sub"
                changed += 1
        return PassResult(changed > 0, {"changed": changed})


class _Liar(_AddToSub):
    name: ClassVar[str] = "liar"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        super().run(model, ctx)
        return PassResult(False)


class _Breaker(Pass):
    name: ClassVar[str] = "breaker"
    summary: ClassVar[str] = "test"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        node = next(iter(model.graph))
        node.op_type = "NoSuchOp"
        return PassResult(True)


class _Crash(Pass):
    name: ClassVar[str] = "crash"
    summary: ClassVar[str] = "test"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        raise KeyError("boom")


def _cleanup() -> Pass:
    return PassRegistry.default().parse("cleanup")


def test_numeric_check_names_the_first_pass_that_changes_outputs(small_model: ir.Model) -> None:
    check = NumericCheckEach()
    ctx = PassContext(instrumentations=[check])
    with pytest.raises(NumericMismatchError, match="pass 'add-to-sub': changed the outputs: output 'y'"):
        apply(small_model, Pipeline([_cleanup(), _AddToSub(), _cleanup()]), ctx)
    assert check.checked and "add-to-sub" not in check.checked


def test_numeric_check_uses_given_inputs(small_model: ir.Model) -> None:
    feeds = {"x": np.ones((3, 8), np.float32)}
    check = NumericCheckEach(feeds)
    apply(small_model, _cleanup(), PassContext(instrumentations=[check]))
    assert check.reference is not None and check.reference["y"].shape == (3, 8)


def test_verify_each_catches_a_pass_that_lies_about_modified(small_model: ir.Model) -> None:
    with pytest.raises(PassFailedError, match="pass 'liar': reported modified=False but changed"):
        apply(small_model, _Liar(), PassContext(instrumentations=[VerifyEach()]))


def test_verify_each_names_the_pass_that_broke_the_model(small_model: ir.Model) -> None:
    with pytest.raises(VerificationError, match="pass 'breaker': model fails verification"):
        apply(small_model, Pipeline([_cleanup(), _Breaker()]), PassContext(instrumentations=[VerifyEach()]))


def test_unexpected_exceptions_are_wrapped_with_the_pass_name(small_model: ir.Model) -> None:
    with pytest.raises(PassFailedError, match="pass 'crash': KeyError"):
        apply(small_model, _Crash())


def test_dump_after_change_writes_only_changing_passes(small_model: ir.Model, tmp_path) -> None:
    dump = DumpAfterChange(tmp_path / "dump")
    timing = Timing()
    apply(small_model, _cleanup(), PassContext(instrumentations=[dump, timing]))
    names = [p.name for p in dump.written]
    assert names[0] == "001-infer-shapes.onnx"
    assert all("topological-sort" not in n for n in names)
    assert len(names) == sum(1 for r in timing.records if r.modified)
    last = load_model(dump.written[-1])
    assert [n.op_type for n in last.graph] == ["Mul", "Add"]
    summary = timing.summary()
    assert summary["fold-constants"]["runs"] == 2


def _negate_relu(graph):  # a user's graphsurgeon script
    for node in graph.nodes:
        if node.op == "Relu":
            node.op = "Abs"
    return graph


def test_graphsurgeon_function_runs_as_a_pass(small_model: ir.Model) -> None:
    feeds = {"x": -np.ones((2, 8), np.float32)}
    model = small_model
    result = apply(model, Pipeline([GraphSurgeonPass(function=_negate_relu)]))
    assert result.modified
    assert "Abs" in [n.op_type for n in model.graph]
    assert "Relu" not in [n.op_type for n in model.graph]
    runtime.run(model, feeds)  # still a valid model


def test_graphsurgeon_pass_from_text_imports_the_function(small_model: ir.Model) -> None:
    pipeline = PassRegistry.default().parse(f"graphsurgeon{{fn={__name__}:_negate_relu}}")
    assert apply(small_model, pipeline).modified
    with pytest.raises(Exception, match="cannot import 'no_such_mod'"):
        apply(small_model, PassRegistry.default().parse("graphsurgeon{fn=no_such_mod:f}"))


def test_crash_reproducer_writes_input_and_pipeline(small_path, tmp_path) -> None:
    from onnxq.framework.instrumentation import CrashReproducer

    model = load_model(small_path)
    hook = CrashReproducer(tmp_path / "repro")
    with pytest.raises(PassFailedError, match="pass 'crash'"):
        apply(model, Pipeline([_cleanup(), _Crash()]), PassContext(instrumentations=[hook]))
    text = (tmp_path / "repro" / "reproducer.txt").read_text()
    assert "failed pass: crash" in text and "pipeline: cleanup,crash" in text
    replayed = load_model(tmp_path / "repro" / "input.onnx")
    assert "Identity" in [n.op_type for n in replayed.graph]  # the untouched input, not the half-done model
