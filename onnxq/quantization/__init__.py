"""INT8 quantization drivers: ``quantize()`` strings optimize, calibration, the target's passes and
the self-check together (the passes themselves live in ``onnxq.passes.quantization``)."""

from __future__ import annotations

from onnxq.quantization.quantize import METHODS, MODES, QuantizeReport, quantize

__all__ = ["METHODS", "MODES", "QuantizeReport", "quantize"]
