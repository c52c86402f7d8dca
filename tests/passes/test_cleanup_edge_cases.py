"""Regression tests for edge cases found in review: graph outputs, random ops, signed zeros, functions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import verify
from onnxq.framework.registry import PassRegistry
from onnxq.passes.cleanup.convert_opset import OpsetConversionError
from tests.conftest import parse

REGISTRY = PassRegistry.default()
HEADER = '<ir_version: 10, opset_import: ["" : 18]>'


def _apply(text: str, model: ir.Model):
    return REGISTRY.parse(text).run(model, PassContext())


def _same_outputs(text: str, pipeline: str, feeds: dict[str, np.ndarray]) -> ir.Model:
    model = parse(text)
    want = runtime.run(model, feeds)
    signature = [(v.name, v.type) for v in model.graph.outputs]
    _apply(pipeline, model)
    verify(model)
    assert [(v.name, v.type) for v in model.graph.outputs] == signature
    assert not runtime.compare(want, runtime.run(model, feeds))
    return model


X = {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)}


def test_cse_keeps_the_type_of_a_renamed_graph_output() -> None:
    model = _same_outputs(HEADER + "g (float[1,3] x) => (float[1,3] z1) { a = Relu(x) b = Neg(a) z1 = Relu(x) }",
                          "eliminate-common-subexpressions", X)
    assert [n.op_type for n in model.graph].count("Relu") == 1


def test_cse_with_duplicate_and_repeated_graph_outputs_settles() -> None:
    text = HEADER + "g (float[1,3] x) => (float[1,3] y1, float[1,3] z, float[1,3] z) { y1 = Relu(x) z = Relu(x) }"
    model = _same_outputs(text, "cleanup", X)
    result = _apply("cleanup", model)
    assert not result.modified


def test_cleanup_settles_with_three_identical_outputs() -> None:
    text = HEADER + "g (float[1,3] x) => (float[1,3] a, float[1,3] b, float[1,3] c) { a = Relu(x) b = Relu(x) c = Relu(x) }"
    model = _same_outputs(text, "cleanup", X)
    assert not _apply("cleanup", model).modified
    assert not any("max_iterations" in str(d) for d in _apply("cleanup", parse(text)).diagnostics)


def test_cse_never_merges_random_ops() -> None:
    model = parse(HEADER + "g (float[4] x) => (float[4] y) { a = Bernoulli(x) b = Bernoulli(x) y = Sub(a, b) }")
    assert not _apply("eliminate-common-subexpressions", model).modified


def test_cse_keeps_signed_zeros_apart() -> None:
    text = HEADER + """
g (float[2] x) => (float[2] y, float[2] z) {
  p = Constant<value_float = 0.0>()
  n = Constant<value_float = -0.0>()
  y = Div(x, p)
  z = Div(x, n)
}"""
    model = _same_outputs(text, "eliminate-common-subexpressions", {"x": np.array([1.0, -1.0], np.float32)})
    assert [n.op_type for n in model.graph].count("Constant") == 2


def test_fold_constants_keeps_a_duplicated_output() -> None:
    text = HEADER + "g (float[1,3] x) => (float[1,3] y, float[1,3] y) { t = Relu(x) y = Identity(t) }"
    model = _same_outputs(text, "fold-constants", X)
    assert [v.name for v in model.graph.outputs] == ["y", "y"]


def test_remove_identity_reaches_function_bodies() -> None:
    proto = onnx.parser.parse_model("""
<ir_version: 10, opset_import: ["" : 18, "local" : 1]>
g (float[1,3] x) => (float[1,3] y) { y = local.F(x) }
<domain: "local", opset_import: ["" : 18]>
F (a) => (b) { t = Relu(a) b = Identity(t) }
""")
    model = ir.serde.deserialize_model(proto)
    want = runtime.run(model, X)
    assert _apply("remove-identity", model).modified
    function = next(iter(model.functions.values()))
    assert [n.op_type for n in function] == ["Relu"]
    assert not runtime.compare(want, runtime.run(model, X))


def test_convert_opset_refuses_models_with_local_functions() -> None:
    proto = onnx.parser.parse_model("""
<ir_version: 10, opset_import: ["" : 18, "local" : 1]>
g (float[1,3] x) => (float[1,3] y) { y = local.F(x) }
<domain: "local", opset_import: ["" : 18]>
F (a) => (b) { b = Relu(a) }
""")
    model = ir.serde.deserialize_model(proto)
    with pytest.raises(OpsetConversionError, match="local functions"):
        _apply("convert-opset{opset=17}", model)
    assert len(model.functions) == 1


def test_numeric_compare_treats_equal_infinities_as_equal_and_sees_imaginary_parts() -> None:
    inf = {"y": np.array([np.inf, -np.inf, 1.0], np.float32)}
    assert not runtime.compare(inf, inf)
    assert runtime.compare({"y": np.array([1 + 1j])}, {"y": np.array([1 + 5j])})
    assert runtime.compare({"y": np.array([np.inf])}, {"y": np.array([1.0])})


def test_fixpoint_needs_at_least_one_iteration() -> None:
    from onnxq.errors import OptionError

    with pytest.raises(OptionError, match="max_iterations=0 must be >= 1"):
        REGISTRY.parse("fixpoint{max_iterations=0}(cleanup)")
