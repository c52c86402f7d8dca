"""lift-opset-for-fusions: lifts only when a gated fusion would fire; refusals leave the model as it is."""

from __future__ import annotations

from onnxq import runtime
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import fingerprint, verify
from onnxq.framework.pipeline import apply
from onnxq.passes.fusion import optimize_pipeline
from onnxq.passes.fusion.lift_opset_for_fusions import LiftOpsetForFusions
from tests.conftest import parse
from tests.passes.fusion._helpers import ops

# A written-out HardSwish, as Paddle and old tf2onnx exports write it (no HardSwish below opset 14).
HARDSWISH_13 = """<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4, 6, 6] x) => (float[1, 4, 6, 6] y) <float zero = {0.0}, float six = {6.0}, float three = {3.0}> {
  t = Add(x, three)
  c = Clip(t, zero, six)
  m = Mul(x, c)
  y = Div(m, six)
}
"""


def test_written_out_hardswish_lifts_to_14_and_fuses() -> None:
    model = parse(HARDSWISH_13)
    feeds = runtime.random_inputs(model, seed=3)
    feeds = {k: v * 5 for k, v in feeds.items()}  # NOTE: reach both clip bounds
    expected = runtime.run(model, feeds)
    result = apply(model, optimize_pipeline(), PassContext())
    assert model.opset_imports[""] == 14
    assert result.stats["lift-opset-for-fusions.opset_lifted_from"] == 13
    assert result.stats["lift-opset-for-fusions.fusions_enabled"] == 1
    assert ops(model) == ["HardSwish"]
    verify(model)
    assert not runtime.compare(expected, runtime.run(model, feeds), rtol=1e-5, atol=1e-5)


def test_no_gated_pattern_no_lift() -> None:
    text = HARDSWISH_13.replace("y = Div(m, six)", "y = Div(m, three)")  # not a HardSwish
    model = parse(text)
    before = fingerprint(model)
    result = LiftOpsetForFusions().run(model, PassContext())
    assert not result.modified and fingerprint(model) == before and model.opset_imports[""] == 13


def test_already_new_enough_is_untouched() -> None:
    model = parse(HARDSWISH_13.replace('"" : 13', '"" : 17'))
    assert not LiftOpsetForFusions().run(model, PassContext()).modified


def test_converter_refusal_is_a_diagnostic_not_an_error() -> None:
    # onnx's converter drops local functions, so convert-opset refuses: the lift leaves the model.
    text = HARDSWISH_13.replace('opset_import: ["" : 13]', 'opset_import: ["" : 13, "local" : 1]') + """
<domain: "local", opset_import: ["" : 13]>
twice (a) => (b) {
  b = Add(a, a)
}
"""
    model = parse(text)
    before = fingerprint(model)
    result = LiftOpsetForFusions().run(model, PassContext())
    assert not result.modified and fingerprint(model) == before
    assert any("need opset 14, left at 13" in str(d) for d in result.diagnostics), result.diagnostics


def test_lift_stops_at_max_opset() -> None:
    model = parse(HARDSWISH_13)
    lifted = LiftOpsetForFusions(max_opset=13).run(model, PassContext())
    assert not lifted.modified and model.opset_imports[""] == 13
