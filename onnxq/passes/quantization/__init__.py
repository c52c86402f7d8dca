"""Quantization passes: static QDQ placement (``insert-qdq``) and weight quantization
(``quantize-weights``), plus the helpers the ``quantize`` command calls.

Typical use, after calibration::

    tensors = tensors_to_calibrate(model, target)            # what calibration must observe
    ranges = calibrate(model, data, tensors=tensors)
    apply(model, static_pipeline(target), PassContext.with_resources([target, ranges]))
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from onnxq.framework.base import Pass
from onnxq.framework.pipeline import Pipeline
from onnxq.passes.quantization._common import Selection
from onnxq.passes.quantization._plan import make_plan
from onnxq.passes.quantization.complete_carried_qdq import CompleteCarriedQDQ
from onnxq.passes.quantization.insert_qdq import InsertQDQ
from onnxq.passes.quantization.legalize_qdq import LegalizeQDQ
from onnxq.passes.quantization.lower_hardswish import LowerHardSwish
from onnxq.passes.quantization.quantize_weights import QuantizeWeights
from onnxq.passes.quantization.quantize_weights_int4 import QuantizeWeightsInt4
from onnxq.passes.quantization.widen_activations import WidenActivations
from onnxq.targets.base import Target

PASSES: tuple[type[Pass], ...] = (LowerHardSwish, CompleteCarriedQDQ, LegalizeQDQ, InsertQDQ, QuantizeWeights,
                                   QuantizeWeightsInt4, WidenActivations)


def tensors_to_calibrate(
    model: ir.Model,
    target: Target,
    options: InsertQDQ.Options | None = None,
    *,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] | None = None,
) -> list[str]:
    """Names of the activation tensors ``insert-qdq`` will need ranges for (sorted).

    Run it on the model as it will be quantized (after the float optimizations): calibration
    then observes only these tensors. ``include``/``exclude`` override those of ``options``.
    """
    options = options or InsertQDQ.Options()
    selection = Selection(
        tuple(include) if include is not None else options.include,
        tuple(exclude) if exclude is not None else options.exclude,
    )
    return make_plan(model, target, selection).range_tensors()


def static_pipeline(
    target: Target,
    *,
    per_channel: bool = True,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    cleanup: bool = True,
) -> Pipeline:
    """insert-qdq, then quantize-weights, then dead-code elimination (the float weights they replaced).

    The pipeline needs the ``target`` and the calibrated ``Ranges`` as context resources.
    """
    from onnxq.passes.cleanup import EliminateDeadCode

    del target  # NOTE: passes read the target from the context; the argument keeps call sites explicit
    passes: list[Any] = [
        InsertQDQ(include=tuple(include), exclude=tuple(exclude)),
        QuantizeWeights(per_channel=per_channel, include=tuple(include), exclude=tuple(exclude)),
    ]
    if cleanup:
        passes.append(EliminateDeadCode())
    return Pipeline(passes)


__all__ = ["PASSES", "CompleteCarriedQDQ", "InsertQDQ", "LegalizeQDQ", "QuantizeWeights", "QuantizeWeightsInt4", "WidenActivations", "static_pipeline", "tensors_to_calibrate"]
