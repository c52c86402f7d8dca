"""Tests of remove-dropout on tiny graphs written as ONNX text (onnx.parser)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnxq import PassContext, PassRegistry, apply

from onnxq_example_passes.remove_dropout import RemoveDropout

HEADER = '<ir_version: 8, opset_import: ["" : 18]>'

SIMPLE = HEADER + """
main (float[2, 4] x) => (float[2, 4] y) {
    a = Relu(x)
    d = Dropout(a)
    y = Sigmoid(d)
}
"""


def load(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def outputs(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_twice(model: ir.Model, pass_: RemoveDropout | None = None):
    pass_ = pass_ or RemoveDropout()
    first = pass_.run(model, PassContext())
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    second = pass_.run(model, PassContext())
    return first, second


def test_removes_dropout_and_keeps_outputs():
    model = load(SIMPLE)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    before = outputs(model, feeds)
    first, second = run_twice(model)
    assert first.modified and first.stats == {"dropouts_removed": 1}
    assert ops(model) == ["Relu", "Sigmoid"]
    np.testing.assert_array_equal(outputs(model, feeds)[0], before[0])
    assert second.modified is False  # idempotent: nothing left to do


def test_dropout_feeding_graph_output_becomes_identity():
    model = load(HEADER + """
main (float[3] x) => (float[3] y) {
    a = Relu(x)
    y = Dropout(a)
}
""")
    first, second = run_twice(model)
    assert first.modified and first.stats == {"dropouts_to_identity": 1}
    assert ops(model) == ["Relu", "Identity"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert second.modified is False


def test_constant_false_training_mode_is_removed():
    model = load(HEADER + """
main (float[3] x) => (float[3] y) {
    t = Constant<value = bool {0}>()
    r = Constant<value = float {0.5}>()
    d = Dropout(x, r, t)
    y = Relu(d)
}
""")
    first, second = run_twice(model)
    assert first.modified
    assert "Dropout" not in ops(model)
    assert second.modified is False


def test_training_mode_true_is_kept():
    model = load(HEADER + """
main (float[3] x) => (float[3] y) {
    t = Constant<value = bool {1}>()
    r = Constant<value = float {0.5}>()
    d = Dropout(x, r, t)
    y = Relu(d)
}
""")
    result = RemoveDropout().run(model, PassContext())
    assert result.modified is False
    assert "Dropout" in ops(model)
    assert any("training_mode is true" in str(d) for d in result.diagnostics)


def test_non_constant_training_mode_needs_assume_inference():
    text = HEADER + """
main (float[3] x, bool t) => (float[3] y) {
    d = Dropout(x, , t)
    y = Relu(d)
}
"""
    model = load(text)
    kept = RemoveDropout().run(model, PassContext())
    assert kept.modified is False and "Dropout" in ops(model)
    assert "assume-inference" in str(kept.diagnostics[0])

    first, second = run_twice(model, RemoveDropout(assume_inference=True))
    assert first.modified and ops(model) == ["Relu"]
    assert [v.name for v in model.graph.inputs] == ["x", "t"]  # the signature never changes
    assert second.modified is False


def test_used_mask_is_kept():
    model = load(HEADER + """
main (float[3] x) => (float[3] y, bool[3] m) {
    y, m = Dropout(x)
}
""")
    result = RemoveDropout().run(model, PassContext())
    assert result.modified is False
    assert "mask" in str(result.diagnostics[0])


def test_dropout_in_subgraph_is_removed():
    model = load(HEADER + """
main (float[3] x, bool c) => (float[3] y) {
    y = If(c) <
        then_branch = g1 () => (float[3] t) { d = Dropout(x)  t = Relu(d) },
        else_branch = g2 () => (float[3] e) { e = Neg(x) }
    >
}
""")
    first, second = run_twice(model)
    assert first.modified
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Relu"]
    assert second.modified is False


def test_registered_in_a_registry_and_text_round_trips():
    registry = PassRegistry()
    registry.register(RemoveDropout)
    pipeline = registry.parse("remove-dropout{assume-inference=true}")
    assert str(pipeline) == "remove-dropout{assume_inference=true}"
    assert registry.parse(str(pipeline)) == pipeline
    model = load(SIMPLE)
    assert apply(model, pipeline).modified
    assert model.metadata_props["onnxq.pipeline"] == str(pipeline)


@pytest.mark.parametrize("opset, attrs, removed", [(6, "<is_test = 1>", True), (6, "", False), (10, "", True)])
def test_old_opsets(opset, attrs, removed):
    model = load(f'<ir_version: 8, opset_import: ["" : {opset}]>' + f"""
main (float[3] x) => (float[3] y) {{
    d = Dropout{attrs}(x)
    y = Relu(d)
}}
""")
    assert RemoveDropout().run(model, PassContext()).modified is removed
    assert ("Dropout" in ops(model)) is not removed
