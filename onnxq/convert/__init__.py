"""Framework exports to checked ONNX models: PyTorch via torch.onnx, TensorFlow via tf2onnx.

Every conversion returns a :class:`ConversionResult` whose model passed the ONNX
checker (full check), strict shape inference and a numeric comparison with the
source framework on onnxruntime CPU; dynamic dims carry readable names. PyTorch
and TensorFlow are optional extras (``onnxq[torch]``, ``onnxq[tf]``) imported only
when a conversion needs them.

Example::

    from onnxq.convert import convert
    from onnxq.ir.io import save_model

    result = convert("model.pt2", dynamic={"x": "batch"})
    save_model(result.model, "model.onnx")
"""

from __future__ import annotations

from onnxq.convert.auto import SOURCE_KINDS, convert, detect_source_kind
from onnxq.convert.common import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, ConversionResult
from onnxq.convert.dims import DimRequest, parse_requests
from onnxq.convert.tf_export import from_keras, from_saved_model
from onnxq.convert.tflite_export import from_tflite
from onnxq.convert.torch_export import from_pt2, from_torch

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "DEFAULT_RTOL",
    "SOURCE_KINDS",
    "ConversionResult",
    "DimRequest",
    "convert",
    "detect_source_kind",
    "from_keras",
    "from_pt2",
    "from_saved_model",
    "from_tflite",
    "from_torch",
    "parse_requests",
]
