"""Example files bundled with onnxq for the quick start and the docs.

``digits_cnn.onnx`` is a tiny CNN (opset 18, ~7k parameters) trained on scikit-learn's
8x8 digits: input ``input`` float32 [batch, 1, 8, 8] in [0, 1], output ``logits``
[batch, 10]. ``digits_samples.npz`` holds 32 held-out images under ``input`` and their
``labels``, usable as calibration or comparison data. Both are regenerated,
deterministically, by ``python models/make_example.py``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["EXAMPLE_INPUT_NAME", "example_inputs_path", "example_model_path"]

#: Name of the example model's input (and of the image array in the samples file).
EXAMPLE_INPUT_NAME = "input"


def _path(filename: str) -> Path:
    # NOTE: the package is a plain folder (setuptools package-data), never a zip, so the
    # traversable is a real file and can be handed to onnxruntime by path.
    return Path(str(importlib.resources.files(__name__).joinpath(filename)))


def example_model_path() -> Path:
    """Path of the bundled example model ``digits_cnn.onnx``."""
    return _path("digits_cnn.onnx")


def example_inputs_path() -> Path:
    """Path of ``digits_samples.npz``: 32 held-out images (key ``input``) and ``labels``."""
    return _path("digits_samples.npz")
