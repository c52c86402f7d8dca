"""``onnxq.quantize`` says which compute nodes inside If / Loop / Scan bodies static QDQ left float."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

import onnxq
from onnxq.framework.base import Severity

RNG = np.random.default_rng(0)


def _lit(a: np.ndarray) -> str:
    return "{" + ",".join(repr(float(v)) for v in a.ravel()) + "}"


def _model(stem: bool) -> ir.Model:
    """An If whose two branches convolve with an outer-scope weight; a main-graph Conv before it."""
    w, v = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32), RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    first = "h = Conv(x, V)" if stem else "h = Identity(x)"
    text = f"""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y)
      <float[4, 4, 3, 3] W = {_lit(w)}, float[4, 4, 1, 1] V = {_lit(v)}, float lo = {{-1000.0}}> {{
      {first}
      m = ReduceMean<keepdims = 0>(h)
      c = Greater(m, lo)
      y = If(c) <
        then_branch = t () => (float[1, 4, 8, 8] o) {{ o = Conv<pads = [1, 1, 1, 1]>(h, W) }},
        else_branch = e () => (float[1, 4, 8, 8] o2) {{ o2 = Relu(h) }}
      >
    }}"""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _lines(stem: bool) -> list[tuple[Severity, str]]:
    feeds = [{"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(16)]
    _, report = onnxq.quantize(_model(stem), feeds, cpu="vnni")
    return [(d.severity, d.message) for d in report.diagnostics if "inside If/Loop/Scan bodies" in d.message]


def test_a_conv_in_a_branch_is_named_beside_a_quantized_main_graph() -> None:
    [(severity, message)] = _lines(stem=True)
    assert severity is Severity.INFO
    assert message.startswith("1 compute node(s) inside If/Loop/Scan bodies stay float (Conv x1)")
    assert "nothing on the main graph" not in message


def test_a_model_whose_compute_is_all_in_a_branch_gets_a_warning() -> None:
    [(severity, message)] = _lines(stem=False)
    assert severity is Severity.WARNING
    assert message.endswith("nothing on the main graph was quantized either")
