"""Small CNN digit classifier (PyTorch): Conv+BatchNorm+ReLU, MaxPool, Gemm.

The same network is the bundled quick-start example (``models/make_example.py``), so it
is kept tiny (~7k parameters, ~30 KB) while still scoring > 95% on the held-out digits.
Input ``input`` float32 [batch, 1, 8, 8] in [0, 1]; output ``logits`` [batch, 10].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import _common, _export, _torch_utils

ENTRIES = ("digits_cnn",)
EPOCHS = 15
LR = 1e-2


class DigitsCNN(nn.Module):
    """Three 3x3 convs (the first with BatchNorm), two max-pools, one linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(input), 1))


def images(x: np.ndarray) -> np.ndarray:
    """Digits [N, 8, 8] -> NCHW [N, 1, 8, 8] float32."""
    return np.array(x[:, None, :, :], dtype=np.float32)


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out digits as NCHW images under the ONNX input name."""
    split = _common.digits_split()
    return _common.Evaluation({"input": images(split.x_test)}, split.y_test.copy())


def train_net(seed: int = _common.SEED) -> DigitsCNN:
    """Trains the network on the digits training split, deterministically for ``seed``."""
    generator = _torch_utils.setup(seed)
    split = _common.digits_split()
    net = DigitsCNN()
    _torch_utils.train(
        net,
        images(split.x_train),
        split.y_train,
        epochs=EPOCHS,
        generator=generator,
        lr=LR,
        augment=_torch_utils.random_shift(1),
    )
    return net


def export(net: DigitsCNN) -> _export.Exported:
    """Exports with a dynamic batch dimension named ``batch``."""
    example = (torch.from_numpy(images(_common.digits_split().x_test[:2])),)
    return _export.export_torch(
        net,
        example,
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        output_names=["logits"],
    )


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains, exports and packages the zoo entry."""
    del workdir  # nothing intermediate to write
    split = _common.digits_split()
    net = train_net()
    exported = export(net)
    x_test = images(split.x_test)
    return [
        _torch_utils.classifier_entry(
            net,
            exported,
            name="digits_cnn",
            architecture="CNN: 3x Conv3x3+ReLU (the first with BN), 2x MaxPool, Linear",
            dataset=_common.DIGITS_DATASET,
            input_name="input",
            x_train=images(split.x_train),
            x_test=x_test,
            y_test=split.y_test,
        )
    ]
