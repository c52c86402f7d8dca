"""The static QDQ pipeline over onnx's node test cases: valid and runnable on every one."""

from __future__ import annotations

import pytest

from tests.passes.quantization.sweep_node_cases import sweep

pytestmark = pytest.mark.slow


def test_static_qdq_never_breaks_an_onnx_node_case() -> None:
    tried, quantized, failures = sweep()
    # onnx 1.23: 378 runnable cases hold an op ort-cpu quantizes; 100 of them get QDQ (the rest
    # are integer-typed, single float ops with no quantized neighbour, or constant-only).
    assert tried >= 300 and quantized >= 80, (tried, quantized)
    assert failures == {}
