"""ResNet-style digit classifier (PyTorch): BasicBlocks with BatchNorm and residual Adds.

Digits are upsampled to 16x16; a 3x3 stem and three stages (16, 32, 64 channels; stride
1, 2, 2) of one BasicBlock each, the strided ones with a 1x1 Conv+BN projection shortcut,
then global average pooling and a linear classifier. Exported with its
``BatchNormalization`` nodes unfolded (the other torch models have them folded by the
exporter), so Conv+BN fusion has something to do. Input ``input`` float32
[batch, 1, 16, 16]; output ``logits`` [batch, 10].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import _common, _digits_images, _export, _torch_utils

ENTRIES = ("resnet_digits", "resnet_digits_op11")
#: Opset of the legacy-exporter variant (same trained weights).
LEGACY_OPSET = 11
EPOCHS = 8
SIZE = 16
LR = 1e-2


def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """Two 3x3 Conv+BN, ReLU between, residual Add (projected when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(y + self.shortcut(x))


class ResNetDigits(nn.Module):
    """Stem, three one-block stages (16/32/64 channels), global average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16, 3, 1), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.classifier = nn.Linear(64, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(input))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out digits, upsampled, under the ONNX input name."""
    split = _common.digits_split()
    return _common.Evaluation({"input": _digits_images.nchw(split.x_test, SIZE)}, split.y_test.copy())


def train_net(seed: int = _common.SEED) -> ResNetDigits:
    """Trains the network on the upsampled training digits, deterministically for ``seed``."""
    generator = _torch_utils.setup(seed)
    split = _common.digits_split()
    net = ResNetDigits()
    _torch_utils.train(
        net, _digits_images.nchw(split.x_train, SIZE), split.y_train, epochs=EPOCHS, generator=generator,
        lr=LR, augment=_torch_utils.random_shift(2),
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
        keep_batchnorm=True,
    )
    base = _torch_utils.classifier_entry(
        net,
        exported,
        name="resnet_digits",
        architecture="ResNet: stem + 3 BasicBlocks (16/32/64 ch, BN, residual Add), GAP, Linear",
        dataset=_common.DIGITS_DATASET + f"; upsampled to {SIZE}x{SIZE}",
        input_name="input",
        x_train=x_train,
        x_test=x_test,
        y_test=split.y_test,
        route="torch.onnx (dynamo, BN kept)",
    )
    return [base, _torch_utils.legacy_variant(net, base, name="resnet_digits_op11", opset=LEGACY_OPSET)]
