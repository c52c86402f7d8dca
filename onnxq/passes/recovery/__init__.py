"""Accuracy-recovery passes: float rewrites and corrections that make INT8 quantization faithful.

- ``cross-layer-equalization``: balance weight ranges of consecutive layers (data-free, CLE);
- ``smooth-quant``: migrate activation outliers into the next layer's weights (calibration data);
- ``correct-bias``: cancel the mean error weight quantization adds to each layer (calibration data);
- ``adaround``: round each weight up or down to minimise its layer's output error (calibration data).

They run on the float model before ``insert-qdq`` / ``quantize-weights``; the accuracy guard of
``onnxq quantize`` tries them when the plain result is below the fidelity floor.
"""

from __future__ import annotations

from onnxq.framework.base import Pass
from onnxq.passes.recovery.adaround import AdaRound
from onnxq.passes.recovery.correct_bias import CorrectBias
from onnxq.passes.recovery.cross_layer_equalization import CrossLayerEqualization
from onnxq.passes.recovery.smooth_quant import SmoothQuant

PASSES: tuple[type[Pass], ...] = (CrossLayerEqualization, SmoothQuant, CorrectBias, AdaRound)

__all__ = ["PASSES", "AdaRound", "CorrectBias", "CrossLayerEqualization", "SmoothQuant"]
