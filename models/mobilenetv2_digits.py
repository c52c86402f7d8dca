"""MobileNetV2-style digit classifier (PyTorch): inverted residuals, depthwise convs, SE.

Digits upsampled to 16x16, a stride-2 stem as in MobileNetV2, then inverted-residual
blocks (1x1 expand, 3x3 depthwise, 1x1 linear project, residual Add when shapes match)
with ReLU6 in the early blocks and HardSwish plus Squeeze-Excite (HardSigmoid gate) in
the late ones, as in MobileNetV3.
These are the ops (depthwise Conv, Clip, HardSwish, HardSigmoid, Mul by a broadcast
gate) that trip quantizers. Input ``input`` float32 [batch, 1, 16, 16].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import _common, _digits_images, _export, _torch_utils

ENTRIES = ("mobilenetv2_digits", "mobilenetv2_digits_op13")
#: Opset of the legacy-exporter variant (same trained weights).
LEGACY_OPSET = 13
EPOCHS = 16
#: Largest random shift (pixels) of the training images; 2 left the training set underfit.
SHIFT = 1
SIZE = 16
LR = 1e-2


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> HardSigmoid -> scale channels."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(gate))))


class InvertedResidual(nn.Module):
    """1x1 expand (BN, act), 3x3 depthwise (BN, act), optional SE, 1x1 project (BN), residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, *, se: bool, hswish: bool) -> None:
        super().__init__()
        hidden = cin * expand
        act: type[nn.Module] = nn.Hardswish if hswish else nn.ReLU6
        layers: list[nn.Module] = [
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), act(),
        ]  # fmt: skip
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Digits(nn.Module):
    """Stride-2 stem, 5 inverted residuals (16->24->24->40->40; 8x8 -> 2x2), 1x1 head, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1, se=False, hswish=False),
            InvertedResidual(16, 24, 2, 4, se=False, hswish=False),
            InvertedResidual(24, 24, 1, 3, se=False, hswish=False),
            InvertedResidual(24, 40, 2, 3, se=True, hswish=True),
            InvertedResidual(40, 40, 1, 3, se=True, hswish=True),
        )
        self.head = nn.Sequential(nn.Conv2d(40, 128, 1, bias=False), nn.BatchNorm2d(128), nn.Hardswish())
        self.classifier = nn.Linear(128, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(input)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out digits, upsampled, under the ONNX input name."""
    split = _common.digits_split()
    return _common.Evaluation({"input": _digits_images.nchw(split.x_test, SIZE)}, split.y_test.copy())


def train_net(seed: int = _common.SEED) -> MobileNetV2Digits:
    """Trains the network on the upsampled training digits, deterministically for ``seed``."""
    generator = _torch_utils.setup(seed)
    split = _common.digits_split()
    net = MobileNetV2Digits()
    _torch_utils.train(
        net, _digits_images.nchw(split.x_train, SIZE), split.y_train, epochs=EPOCHS, generator=generator,
        lr=LR, augment=_torch_utils.random_shift(SHIFT),
    )  # fmt: skip
    return net


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains on upsampled digits, exports with a dynamic batch, packages the entry."""
    del workdir
    split = _common.digits_split()
    x_train = _digits_images.nchw(split.x_train, SIZE)
    x_test = _digits_images.nchw(split.x_test, SIZE)
    net = train_net()
    exported = _export.export_torch(
        net,
        (torch.from_numpy(x_test[:2]),),
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        output_names=["logits"],
    )
    base = _torch_utils.classifier_entry(
        net,
        exported,
        name="mobilenetv2_digits",
        architecture="MobileNetV2-style: 5 inverted residuals (depthwise, ReLU6/HardSwish, SE), GAP, Linear",
        dataset=_common.DIGITS_DATASET + f"; upsampled to {SIZE}x{SIZE}",
        input_name="input",
        x_train=x_train,
        x_test=x_test,
        y_test=split.y_test,
    )
    return [base, _torch_utils.legacy_variant(net, base, name="mobilenetv2_digits_op13", opset=LEGACY_OPSET)]
