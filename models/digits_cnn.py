"""Small CNN digit classifier (PyTorch): Conv+BatchNorm+ReLU, MaxPool, Gemm.

The same network is the bundled quick-start example (``models/make_example.py``), so it
is kept tiny (~7k parameters, ~30 KB) while still scoring > 95% on the held-out digits.
Input ``input`` float32 [batch, 1, 8, 8] in [0, 1]; output ``logits`` [batch, 10].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import _common, _export, _torch_utils

ENTRIES = ("digits_cnn", "digits_cnn_qat")
EPOCHS = 15
LR = 1e-2
#: Quantization-aware fine-tuning of the trained network: epochs, learning rate, and the opset
#: the legacy exporter writes per-channel QuantizeLinear at (``axis`` needs 13).
QAT_EPOCHS = 3
QAT_LR = 1e-3
QAT_OPSET = 13


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


class _QuantStubs(nn.Module):
    """``torch.ao.quantization`` eager mode: the network between a QuantStub and a DeQuantStub."""

    def __init__(self, net: DigitsCNN) -> None:
        super().__init__()
        from torch.ao import quantization as tq

        self.quant, self.net, self.dequant = tq.QuantStub(), net, tq.DeQuantStub()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.net(self.quant(input)))


def qat_net(net: DigitsCNN, seed: int = _common.SEED) -> nn.Module:
    """The trained ``net`` fine-tuned with PyTorch's fake quantization (eager-mode QAT).

    Conv+BN+ReLU and Conv+ReLU fused (``fuse_modules_qat``: the exported graph keeps the ConvBn
    fold as Conv / Div / BatchNormalization), uint8 activations with moving-average min/max,
    symmetric per-channel int8 weights (full range, as PyTorch's default), observers frozen
    after training. ``FakeQuantize`` rather than the fused default: the TorchScript exporter
    writes it as QuantizeLinear / DequantizeLinear; neither exporter takes the fused op.
    """
    import copy

    from torch.ao import quantization as tq

    generator = _torch_utils.setup(seed)
    model = _QuantStubs(copy.deepcopy(net))
    tq.fuse_modules_qat(model.net.features, [["0", "1", "2"], ["3", "4"], ["6", "7"]], inplace=True)
    model.qconfig = tq.QConfig(
        activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                             dtype=torch.quint8),
        weight=tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    model.train()
    tq.prepare_qat(model, inplace=True)
    split = _common.digits_split()
    _torch_utils.train(model, images(split.x_train), split.y_train, epochs=QAT_EPOCHS, generator=generator,
                       lr=QAT_LR)
    model.apply(tq.disable_observer)
    model.eval()
    return model


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
    base = _torch_utils.classifier_entry(
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
    qat = qat_net(net)
    legacy = _torch_utils.legacy_variant(qat, base, name="digits_cnn_qat", opset=QAT_OPSET)
    qat_entry = dataclasses.replace(
        legacy,
        architecture=f"{base.architecture}; PyTorch eager-mode QAT ({QAT_EPOCHS} epochs, FakeQuantize: uint8 "
                     "activations, per-channel int8 weights) exported with its QuantizeLinear / DequantizeLinear",
        route=f"torch.ao.quantization prepare_qat, torch.onnx legacy TorchScript exporter, opset {QAT_OPSET}",
        reference=_torch_utils.predict(qat, x_test),
    )
    return [base, qat_entry]
