"""Precision passes: the whole model in a lower float type, with float32 islands where it would break.

- ``convert-float16``: weights and compute in float16 (onnxruntime's converter), float32 islands for
  calibrated overflow and a block list, Casts only at island borders.
- ``convert-bfloat16``: weights and compute in bfloat16 (onnxq's own schema-driven converter, lazy
  weights), float32 islands where the type is not there.
"""

from __future__ import annotations

from onnxq.framework.base import Pass
from onnxq.passes.precision.convert_bfloat16 import ConvertBFloat16
from onnxq.passes.precision.convert_float16 import ConvertFloat16

PASSES: tuple[type[Pass], ...] = (ConvertFloat16, ConvertBFloat16)

__all__ = ["PASSES", "ConvertBFloat16", "ConvertFloat16"]
