"""lower-hardswish: HardSwish as Add / Clip / Mul, so onnxruntime CPU runs it on integer kernels."""

from __future__ import annotations

import numpy as np

from onnxq import runtime
from onnxq.passes.fusion.fold_affine_into_conv import FoldAffineIntoConv
from onnxq.passes.quantization.lower_hardswish import LowerHardSwish
from onnxq.quantization import quantize as quantize_model
from onnxq.validation.self_check import sqnr_db
from tests.passes.fusion._helpers import assert_declines, assert_fires, ops
from tests.passes.quantization.qdq_helpers import build, optimized_ops

HEADER = '<ir_version: 8, opset_import: ["" : 14]>\n'
CONV_HSWISH_CONV = HEADER + """
g (float[1, 3, 16, 16] x) => (float[1, 8, 16, 16] y) {
  a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
  h = HardSwish(a)
  y = Conv<pads = [1, 1, 1, 1]>(h, w2, b2)
}
"""
WEIGHTS = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,)}


def _text_with_weights() -> str:
    rng = np.random.default_rng(0)
    def values(shape: tuple[int, ...]) -> str:
        return ", ".join(f"{v:.4f}" for v in rng.normal(0, 1, int(np.prod(shape))))
    inits = ", ".join(f"float[{', '.join(map(str, s))}] {n} = {{{values(s)}}}" for n, s in WEIGHTS.items())
    return CONV_HSWISH_CONV.replace("{\n  a =", f"<{inits}> {{\n  a =", 1)


def test_lowered_then_the_sixth_folds_into_the_next_conv() -> None:
    text = _text_with_weights()
    lowered = assert_fires(LowerHardSwish(), text, {"hardswish_lowered": 1}, atol=1e-4)
    assert ops(lowered) == ["Conv", "Add", "Clip", "Mul", "Mul", "Conv"]
    # NOTE: Conv(x / 6) = Conv with W / 6 whatever the pads (a zero pad scales to zero).
    folded = assert_fires(FoldAffineIntoConv(), _lowered_text(text), {"affines_folded": 1}, atol=1e-4)
    assert ops(folded) == ["Conv", "Add", "Clip", "Mul", "Conv"]


def _lowered_text(text: str) -> str:
    return text.replace("h = HardSwish(a)", "p = Add(a, three)\n  r = Clip(p, zero, six)\n  m = Mul(a, r)\n"
                        "  h = Mul(m, sixth)").replace(
        "> {\n  a =", ", float three = {3.0}, float zero = {0.0}, float six = {6.0}, "
        "float sixth = {0.16666667}> {\n  a =", 1)


def test_an_excluded_hardswish_stays() -> None:
    assert_declines(LowerHardSwish(exclude=("HardSwish",)), _text_with_weights(), "not selected for quantization")


def test_quantize_runs_hardswish_on_integer_kernels_and_the_float_rung_keeps_it() -> None:
    model = build(CONV_HSWISH_CONV, **WEIGHTS)
    reference = model.clone()  # NOTE: quantize works on the model it is given
    rng = np.random.default_rng(1)
    data = [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(12)]
    quantized, report = quantize_model(model, data, self_check=False)
    assert report.stats["lower-hardswish.hardswish_lowered"] == 1
    kernels = optimized_ops(quantized)
    # NOTE: before the lowering onnxruntime ran DequantizeLinear, HardSigmoid, Mul, QuantizeLinear here.
    assert kernels["QLinearConv"] == 2 and kernels["QLinearAdd"] == 1 and kernels["QLinearMul"] == 1, kernels
    assert not {"HardSigmoid", "HardSwish", "Clip", "Mul", "Add"} & set(kernels), kernels
    feed = data[0]
    ref, got = runtime.run(reference, feed)["y"], runtime.run(quantized, feed)["y"]
    assert 25 < sqnr_db(ref, got) < 60, sqnr_db(ref, got)  # NOTE: 8-bit steps on both CPU kinds: about 30 dB
    floating, float_report = quantize_model(build(CONV_HSWISH_CONV, **WEIGHTS), data, include=("(?!)",),
                                            self_check=False)
    assert "lower-hardswish.hardswish_lowered" not in float_report.stats
    assert [n.op_type for n in floating.graph] == ["Conv", "HardSwish", "Conv"]
