"""Pins the public API surface: a change here is a deliberate API change."""

from __future__ import annotations

import onnxq


def test_public_api_surface() -> None:
    assert sorted(onnxq.__all__) == [
        "Analysis",
        "Diagnostic",
        "OnnxqError",
        "Pass",
        "PassContext",
        "PassRegistry",
        "PassResult",
        "Pipeline",
        "QuantizeReport",
        "Resource",
        "Severity",
        "UserError",
        "apply",
        "load_model",
        "quantize",
        "save_model",
    ]
    for name in onnxq.__all__:
        assert getattr(onnxq, name) is not None
