"""Pipelines: text and TOML round trips, registry errors, fixpoint, metadata, onnx_ir interop."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.errors import OptionError, UnknownPassError
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import Analysis, PassContext, Resource
from onnxq.framework.pipeline import PIPELINE_METADATA_KEY, Pipeline, apply
from onnxq.framework.registry import PassRegistry, to_toml


@pytest.fixture(scope="module")
def registry() -> PassRegistry:
    return PassRegistry.default()


@pytest.mark.parametrize(
    "text",
    [
        "cleanup",
        "fold-constants,remove-identity",
        "fold-constants{output_size_limit=100,input_size_limit=7},topological-sort",
        "cleanup{max_iterations=3},fixpoint{max_iterations=4}(remove-identity,eliminate-dead-code)",
        "pipeline(infer-shapes{strict=true}),convert-opset{opset=17}",
        'graphsurgeon{fn="a.b:c"}',
    ],
)
def test_text_round_trips(registry: PassRegistry, text: str, tmp_path) -> None:
    pipeline = registry.parse(text)
    assert registry.parse(str(pipeline)) == pipeline
    path = tmp_path / "p.toml"
    path.write_text(to_toml(pipeline))
    assert registry.load(path) == pipeline


def test_text_prints_only_changed_options(registry: PassRegistry) -> None:
    assert str(registry.parse("fold-constants{output_size_limit=262144}")) == "fold-constants"
    assert str(registry.parse(" cleanup , remove-identity ")) == "cleanup,remove-identity"


def test_toml_file_with_tables_and_text_items(registry: PassRegistry, tmp_path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[pipeline]\nfixpoint = true\nmax_iterations = 2\n'
        'passes = ["fold-constants{output_size_limit=10}", {name = "eliminate-dead-code"}]\n'
    )
    pipeline = registry.load(path)
    assert str(pipeline) == "fixpoint{max_iterations=2}(fold-constants{output_size_limit=10},eliminate-dead-code)"


def test_unknown_pass_suggests_the_closest_name(registry: PassRegistry) -> None:
    with pytest.raises(UnknownPassError, match="did you mean 'fold-constants'"):
        registry.parse("fold-constant")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fold-constants{nope=1}", "has no option 'nope'"),
        ("fold-constants{input_size_limit=abc}", "'abc' is not a valid int"),
        ("infer-shapes{strict=maybe}", "'maybe' is not a valid bool"),
        ("cleanup,", "expected a pass name at column 9"),
        ("fold-constants{x", "expected '='"),
        ("remove-identity(topological-sort)", "does not take nested passes"),
        ("fixpoint", "needs its passes in parentheses"),
        ("fold-constants{input_size_limit=-1}", "size limits must be >= 0"),
        ("fixpoint{max_iterations=0}(cleanup)", "must be >= 1"),
        ("fold-constants{output_size_limit=1.5}", "'1.5' is not a valid int"),
    ],
)
def test_bad_pipeline_text_is_a_user_error(registry: PassRegistry, text: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        registry.parse(text)


def test_bad_toml_names_the_file(registry: PassRegistry, tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("passes = [1")
    with pytest.raises(OptionError, match="bad.toml: not valid TOML"):
        registry.load(path)
    with pytest.raises(OptionError, match="pipeline file not found"):
        registry.load(tmp_path / "missing.toml")


def test_cleanup_reaches_a_fixpoint_and_preserves_outputs(registry: PassRegistry, small_model: ir.Model) -> None:
    feeds = {"x": np.arange(16, dtype=np.float32).reshape(2, 8)}
    expected = runtime.run(small_model, feeds)
    result = apply(small_model, registry.parse("cleanup"))
    assert result.modified
    assert [n.op_type for n in small_model.graph] == ["Mul", "Add"]
    assert result.stats["eliminate-common-subexpressions.nodes_merged"] == 1
    assert not runtime.compare(expected, runtime.run(small_model, feeds))
    assert small_model.metadata_props[PIPELINE_METADATA_KEY] == "cleanup"
    again = apply(small_model, registry.parse("cleanup"))
    assert not again.modified


def test_registry_rejects_duplicate_names(registry: PassRegistry) -> None:
    from onnxq.passes.cleanup import FoldConstants

    registry.register(FoldConstants)  # same class again is a no-op

    class Other(FoldConstants):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other)


def test_onnxq_pass_runs_in_onnx_ir_pass_manager(small_model: ir.Model) -> None:
    from onnxq.passes.cleanup import EliminateDeadCode, RemoveIdentity

    manager = ir.passes.PassManager([RemoveIdentity(), EliminateDeadCode()])
    result = manager(small_model)
    assert result.modified
    assert "Identity" not in [n.op_type for n in small_model.graph]


class _Count(Analysis[int]):
    calls = 0

    @classmethod
    def compute(cls, model: ir.Model) -> int:
        cls.calls += 1
        return len(model.graph)


@dataclasses.dataclass
class _Data(Resource):
    value: int


class _UsesAnalysis(Pass):
    name: ClassVar[str] = "uses-analysis"
    summary: ClassVar[str] = "test"
    needs = (_Data,)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        n = ctx.analysis(_Count, model)
        ctx.analysis(_Count, model)
        return PassResult(False, {"nodes": n, "data": ctx.resource(_Data).value})


def test_analyses_are_cached_and_resources_required(small_model: ir.Model) -> None:
    _Count.calls = 0
    ctx = PassContext.with_resources([_Data(7)])
    result = apply(small_model, Pipeline([_UsesAnalysis(), _UsesAnalysis()]), ctx)
    assert result.stats == {"uses-analysis.nodes": 18, "uses-analysis.data": 14}
    assert _Count.calls == 1
    with pytest.raises(OptionError, match="needs a _Data"):
        apply(small_model, _UsesAnalysis(), PassContext())
