"""Recurrent digit classifier (PyTorch): bidirectional LSTM then GRU over image rows.

Each 8x8 digit is read top to bottom as a sequence of 8 rows (8 features each), so the
ONNX graph holds real ``LSTM`` and ``GRU`` ops (recurrent weights, per-gate activations),
the case quantizers most often leave in float. Input ``rows`` float32 [batch, 8, 8];
output ``logits`` [batch, 10].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import _common, _export, _torch_utils

ENTRIES = ("lstm_gru", "lstm_gru_op12")
#: Opset of the legacy-exporter variant (same trained weights).
LEGACY_OPSET = 12
EPOCHS = 20
LR = 1e-2


class RowRNN(nn.Module):
    """BiLSTM(8 -> 2x32) -> GRU(64 -> 48) -> mean over time -> Linear(48 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(64, 48, batch_first=True)
        self.classifier = nn.Linear(48, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(rows)
        hidden, _ = self.gru(hidden)
        return self.classifier(hidden.mean(dim=1))


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out digits as row sequences under the ONNX input name."""
    split = _common.digits_split()
    return _common.Evaluation({"rows": split.x_test.copy()}, split.y_test.copy())


def train_net(seed: int = _common.SEED) -> RowRNN:
    """Trains the network on the training digits' rows, deterministically for ``seed``."""
    generator = _torch_utils.setup(seed)
    split = _common.digits_split()
    net = RowRNN()
    _torch_utils.train(net, split.x_train, split.y_train, epochs=EPOCHS, generator=generator, lr=LR)
    return net


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains on digits rows, exports with a dynamic batch, packages the entry."""
    del workdir
    split = _common.digits_split()
    net = train_net()
    exported = _export.export_torch(
        net,
        (torch.from_numpy(split.x_test[:2].copy()),),
        dynamic_shapes={"rows": {0: torch.export.Dim("batch")}},
        output_names=["logits"],
    )
    x_test = split.x_test.copy()
    base = _torch_utils.classifier_entry(
        net,
        exported,
        name="lstm_gru",
        architecture="BiLSTM(2x32) + GRU(48) over 8 image rows, mean-pool, Linear",
        dataset=_common.DIGITS_DATASET + "; rows as a sequence",
        input_name="rows",
        x_train=split.x_train,
        x_test=x_test,
        y_test=split.y_test,
    )
    return [base, _torch_utils.legacy_variant(net, base, name="lstm_gru_op12", opset=LEGACY_OPSET)]
