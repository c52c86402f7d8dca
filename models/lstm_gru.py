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

ENTRIES = ("lstm_gru",)
EPOCHS = 20


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


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains on digits rows, exports with a dynamic batch, packages the entry."""
    del workdir
    generator = _torch_utils.setup()
    split = _common.digits_split()
    net = RowRNN()
    _torch_utils.train(net, split.x_train, split.y_train, epochs=EPOCHS, generator=generator, lr=1e-2)
    exported = _export.export_torch(
        net,
        (torch.from_numpy(split.x_test[:2].copy()),),
        dynamic_shapes={"rows": {0: torch.export.Dim("batch")}},
        output_names=["logits"],
    )
    x_test = split.x_test.copy()
    return [
        _torch_utils.classifier_entry(
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
    ]
