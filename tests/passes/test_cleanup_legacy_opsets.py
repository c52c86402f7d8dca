"""Every node a cleanup pass creates is valid at the model's opset.

Tiny ONNX-text graphs pin the two mechanisms (a folded ``Shape`` becomes a
``Constant`` with the ``value`` tensor below opset 12; a rewrite the checker
refuses at the model's opset is not applied). Real old-opset exports (PyTorch's
legacy exporter at opsets 10-13, tf2onnx at 11 and 13, see
``tests/_legacy_models.py``) go through ``cleanup`` with verify-each and must pass
the full checker and reproduce the framework's outputs on onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq import runtime
from onnxq.cli import main
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import VerifyEach
from onnxq.framework.pipeline import apply
from onnxq.framework.registry import PassRegistry
from tests import _legacy_models
from tests.conftest import parse

REGISTRY = PassRegistry.default()

SHAPE_OF_STATIC = """
<ir_version: 7, opset_import: ["" : {opset}]>
g (float[2, 3] x) => (float[3, 2] y) {{
  s = Shape(x)
  r = Reshape(x, s)
  back = Constant<value = int64[2] {{3, 2}}>()
  y = Reshape(r, back)
}}
"""


def _fold(model: ir.Model):
    return apply(model, REGISTRY.parse("infer-shapes,fold-constants"), PassContext(instrumentations=[VerifyEach()]))


@pytest.mark.parametrize("opset", [10, 11, 12, 13])
def test_folded_shape_is_a_constant_valid_at_the_opset(opset: int) -> None:
    model = parse(SHAPE_OF_STATIC.format(opset=opset))
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    before = runtime.run(model, feeds)
    _fold(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    constants = [n for n in model.graph if n.op_type == "Constant"]
    assert "Shape" not in [n.op_type for n in model.graph]
    if opset < 12:
        assert all(set(n.attributes) == {"value"} for n in constants)
    assert not runtime.compare(before, runtime.run(model, feeds))


SPLIT_TO_SEQUENCE = """
<ir_version: 7, opset_import: ["" : 11]>
g (float[4, 3] x) => (float[2, 3] y) {
  split = Constant<value = int64[2] {2, 2}>()
  seq = SplitToSequence<axis = 0>(x, split)
  zero = Constant<value = int64 {0}>()
  t = SequenceAt(seq, zero)
  y = Neg(t)
}
"""


def test_rewrite_invalid_at_the_opset_is_declined_with_a_reason() -> None:
    # onnxscript rewrites SplitToSequence(x, split) into Split(x, split): Split takes its sizes
    # as an input only from opset 13, so at opset 11 the node must stay as it is.
    model = parse(SPLIT_TO_SEQUENCE)
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
    before = runtime.run(model, feeds)
    result = _fold(model)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    assert "SplitToSequence" in [n.op_type for n in model.graph]
    reasons = [d.message for d in result.diagnostics]
    assert any("not valid at this opset" in r and "Split" in r for r in reasons), reasons
    assert not runtime.compare(before, runtime.run(model, feeds))


def test_same_rewrite_applies_where_the_opset_allows_it() -> None:
    model = parse(SPLIT_TO_SEQUENCE.replace('"" : 11', '"" : 13'))
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
    before = runtime.run(model, feeds)
    _fold(model)
    assert "SplitToSequence" not in [n.op_type for n in model.graph]
    assert not runtime.compare(before, runtime.run(model, feeds))


# --- real old-opset exports ---------------------------------------------------------------


def _legacy() -> tuple[_legacy_models.LegacyModel, ...]:
    return _legacy_models.build_all()


LEGACY_NAMES = [f"torch_{net}_opset{v}" for net in ("cnn", "lstm") for v in _legacy_models.TORCH_OPSETS] + [
    f"tf_cnn_opset{v}" for v in _legacy_models.TF_OPSETS
]


def _find(name: str) -> _legacy_models.LegacyModel:
    (found,) = [m for m in _legacy() if m.name == name]
    return found


@pytest.mark.slow
def test_every_legacy_model_is_built() -> None:
    assert sorted(m.name for m in _legacy()) == sorted(LEGACY_NAMES)
    assert {m.opset for m in _legacy()} == {10, 11, 12, 13}


@pytest.mark.slow
@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_cleanup_with_verify_each_on_old_opset_export(name: str) -> None:
    legacy = _find(name)
    model = ir.serde.deserialize_model(legacy.model)
    nodes_before = len(model.graph)
    result = apply(model, REGISTRY.parse("cleanup"), PassContext(instrumentations=[VerifyEach()]))
    assert result.modified
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {(o.domain, o.version) for o in proto.opset_import} == {
        (o.domain, o.version) for o in legacy.model.opset_import
    }
    got = runtime.run(model, legacy.feeds)
    (want,) = legacy.expected
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=legacy.rtol, atol=legacy.atol)
    if name.startswith("torch"):
        # Unfolded exports: shape arithmetic and constants must have folded away.
        assert len(model.graph) < nodes_before


@pytest.mark.slow
def test_cli_fold_constants_on_opset_11_lstm_export(tmp_path: Path) -> None:
    # The reported case: infer-shapes,fold-constants on an opset-11 export wrote Constant{value_ints}.
    legacy = _find("torch_lstm_opset11")
    src, out = tmp_path / "lstm11.onnx", tmp_path / "out.onnx"
    onnx.save(legacy.model, src)
    assert main(["run", str(src), "-p", "infer-shapes,fold-constants", "-o", str(out), "--verify-each"]) == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)
    got = runtime.run(ir.load(out), legacy.feeds)
    np.testing.assert_allclose(next(iter(got.values())), legacy.expected[0], rtol=1e-4, atol=1e-5)


IR3 = """
<ir_version: 3, opset_import: ["" : 8]>
g (float[2, 3] x) => (float[2, 3] y) {
  a = Constant<value = float[3] {1., 2., 3.}>()
  b = Constant<value = float[3] {1., 1., 1.}>()
  c = Add(a, b)
  y = Mul(x, c)
}
"""


def test_ir3_folded_initializers_are_graph_inputs() -> None:
    # Below IR version 4 the checker wants every initializer listed among the graph inputs.
    model = parse(IR3)
    feeds = {"x": np.ones((2, 3), np.float32)}
    before = runtime.run(model, feeds)
    apply(model, REGISTRY.parse("cleanup"), PassContext(instrumentations=[VerifyEach()]))
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {i.name for i in proto.graph.initializer} <= {i.name for i in proto.graph.input}
    assert [n.op_type for n in model.graph] == ["Mul"]
    assert not runtime.compare(before, runtime.run(model, feeds))
