"""Helpers for fusion tests: run a pass on ONNX text, check numerics, rule tags, idempotency, misses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RULE_NAME_TAG

from onnxq import runtime
from onnxq.framework.base import PassResult
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import fingerprint, verify
from onnxq.passes.cleanup._graphs import all_graphs
from onnxq.passes.cleanup.infer_shapes import InferShapes
from onnxq.passes.fusion._rewrite import RewritePass
from tests.conftest import parse


def ops(model: ir.Model) -> list[str]:
    """Op types of every graph (main, subgraphs, functions) in order."""
    return [n.op_type for g in all_graphs(model) for n in g]


def assert_fires(
    pass_: RewritePass,
    text: str,
    stats: Mapping[str, int],
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ir.Model:
    """Runs the pass; checks stats, checker, outputs vs the original in onnxruntime, tags, idempotency."""
    model = parse(text)
    # NOTE: the optimize preset runs infer-shapes before the fusions; rank checks read those shapes.
    InferShapes().run(model, PassContext())
    feeds = dict(feeds) if feeds is not None else runtime.random_inputs(model, seed=1)
    expected = runtime.run(model, feeds)
    before_nodes = {id(n) for g in all_graphs(model) for n in g}
    result = pass_.run(model, PassContext())
    assert result.modified, result
    assert dict(result.stats) == dict(stats), result.stats
    verify(model)
    actual = runtime.run(model, feeds)
    assert not runtime.compare(expected, actual, rtol=rtol, atol=atol), runtime.compare(expected, actual)
    created = [n for g in all_graphs(model) for n in g if id(n) not in before_nodes]
    assert created, "the pass reported a change but created no node"
    for node in created:
        assert pass_.name in node.metadata_props.get(RULE_NAME_TAG, ""), (node, node.metadata_props)
    again = fingerprint(model)
    second: PassResult = pass_.run(model, PassContext())
    assert not second.modified and fingerprint(model) == again, second
    return model


def assert_declines(pass_: RewritePass, text: str, reason: str) -> ir.Model:
    """Runs the pass; checks it changed nothing and that explain() gives ``reason``."""
    model = parse(text)
    InferShapes().run(model, PassContext())
    before = fingerprint(model)
    result = pass_.run(model, PassContext())
    assert not result.modified and fingerprint(model) == before, result
    misses = pass_.explain(model)
    assert any(reason in str(m) for m in misses), [str(m) for m in misses]
    return model
