"""The optimize preset: registry text, targets, the Python helper the quantize command calls."""

from __future__ import annotations

import pytest

from onnxq.errors import OptionError
from onnxq.framework.registry import PassRegistry
from onnxq.passes.fusion import PASSES, optimize_pipeline


def test_preset_round_trips_and_holds_every_fusion() -> None:
    registry = PassRegistry.default()
    assert str(registry.parse("optimize")) == "optimize"
    pipeline = registry.create("optimize")
    assert str(pipeline) == "optimize" and pipeline.options.fixpoint
    names = [p.name for p in pipeline.passes]
    assert names[:6] == ["infer-shapes", "fold-constants", "remove-identity", "eliminate-common-subexpressions",
                         "eliminate-dead-code", "topological-sort"]
    assert set(names) >= {cls.name for cls in PASSES}
    assert optimize_pipeline() == pipeline


def test_other_target_prints_as_parseable_text() -> None:
    registry = PassRegistry.default()
    pipeline = optimize_pipeline("tensorrt")
    assert "fuse-gelu{target=tensorrt}" in str(pipeline)
    assert registry.parse(str(pipeline)) == pipeline


def test_unknown_target() -> None:
    with pytest.raises(OptionError, match="unknown target 'tpu'"):
        optimize_pipeline("tpu")
