"""onnxq: framework-agnostic ONNX graph transformation and quantization."""

from __future__ import annotations

from onnxq.errors import OnnxqError, UserError
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import Analysis, PassContext, Resource
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.framework.registry import PassRegistry
from onnxq.ir.io import load_model, save_model
from onnxq.quantization import QuantizeReport, quantize

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Diagnostic",
    "OnnxqError",
    "Pass",
    "PassContext",
    "PassRegistry",
    "PassResult",
    "QuantizeReport",
    "Pipeline",
    "Resource",
    "Severity",
    "UserError",
    "apply",
    "load_model",
    "quantize",
    "save_model",
]
