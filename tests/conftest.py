"""Shared fixtures: tiny models written as ONNX text."""

from __future__ import annotations

import os

import onnx
import onnx.parser
import onnx_ir as ir
import pytest

# Plugins installed on the developer's machine must not change test results.
os.environ.setdefault("ONNXQ_NO_PLUGINS", "")


def parse(text: str) -> ir.Model:
    """An onnx_ir model from ONNX text (checked by onnx first)."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


SMALL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 8] x) => (float[N, 8] y) {
  one = Constant<value_float = 1.0>()
  two = Constant<value_float = 2.0>()
  three = Add(one, two)
  a = Mul(x, three)
  b = Mul(x, three)
  i = Identity(a)
  c = Add(i, b)
  dead = Relu(x)
  y = Identity(c)
}
"""


@pytest.fixture
def small_model() -> ir.Model:
    return parse(SMALL)


@pytest.fixture
def small_path(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(onnx.parser.parse_model(SMALL), path)
    return path
