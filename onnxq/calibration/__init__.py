"""Streaming calibration: samples in, per-tensor ranges out (the ``Ranges`` artifact).

::

    from onnxq.calibration import CalibrationData, calibrate

    data = CalibrationData.from_source("calib/")          # folder of .npz, .npz, feeds, reader
    calib, held = data.split(holdout=8)                   # held-back samples for a self-check
    ranges = calibrate(model, calib, method="entropy")   # minmax, moving_average, percentile, entropy, mse
    ranges.save("ranges.json")                            # reuse: Ranges.load(path, fingerprint=model_fingerprint(model))

Modules: ``data`` (sources and checks), ``observers`` (streaming, mergeable state per tensor),
``collector`` (the onnxruntime session and ``calibrate``), ``ranges`` (the artifact).
"""

from __future__ import annotations

from onnxq.calibration.collector import (
    METHODS,
    CalibrationError,
    Collection,
    calibrate,
    collect,
    observer_factory,
    select_tensors,
)
from onnxq.calibration.data import CalibrationData, CalibrationDataError, InputSpec, Sample, input_specs
from onnxq.calibration.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    safe_range,
)
from onnxq.calibration.ranges import Ranges, RangesError, TensorRange, model_fingerprint

__all__ = [
    "METHODS",
    "CalibrationData",
    "CalibrationDataError",
    "CalibrationError",
    "Collection",
    "HistogramObserver",
    "InputSpec",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "Ranges",
    "RangesError",
    "Sample",
    "TensorRange",
    "calibrate",
    "collect",
    "input_specs",
    "model_fingerprint",
    "observer_factory",
    "safe_range",
    "select_tensors",
]
