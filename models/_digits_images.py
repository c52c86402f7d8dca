"""Digits as images for the convolutional zoo models: NCHW, optionally upsampled.

Upsampling (bilinear, done once in numpy via torch) gives the ResNet/MobileNet models
room for strided stages; the model input is then the upsampled image, so the stored
eval/calib sets are exactly what the ONNX model consumes.
"""

from __future__ import annotations

import numpy as np
import torch


def nchw(x: np.ndarray, size: int = 8) -> np.ndarray:
    """Digits [N, 8, 8] -> float32 [N, 1, size, size] (bilinear when size != 8)."""
    images = torch.from_numpy(np.array(x[:, None, :, :], dtype=np.float32))
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    return images.numpy().copy()
