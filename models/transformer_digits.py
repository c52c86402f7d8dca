"""Small transformer encoder classifier (PyTorch) reading a digit as 8 row tokens.

Each 8x8 image becomes 8 tokens of 8 pixels, linearly embedded to 64 dims with learned
positions, then 2 post-LN encoder layers (4 heads, GELU FFN 128), mean-pooled and
classified. The graph has the MatMul/Softmax/LayerNormalization/GELU patterns of
larger encoders at a size that trains in seconds. Input ``rows`` float32 [batch, 8, 8].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import _common, _export, _torch_utils, _transformer

ENTRIES = ("transformer_digits",)
EPOCHS = 15
LR = 3e-3
HIDDEN = 64


class RowTransformer(nn.Module):
    """Linear token embedding + learned positions, 2 encoder layers, mean-pool, Linear."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, HIDDEN)
        self.positions = nn.Parameter(torch.zeros(1, 8, HIDDEN))
        self.norm = nn.LayerNorm(HIDDEN)
        self.layers = nn.ModuleList(
            _transformer.EncoderLayer(HIDDEN, 4, 2 * HIDDEN, eps=1e-5) for _ in range(layers)
        )
        self.classifier = nn.Linear(HIDDEN, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(rows) + self.positions)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.mean(dim=1))


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out digits as row tokens under the ONNX input name."""
    split = _common.digits_split()
    return _common.Evaluation({"rows": split.x_test.copy()}, split.y_test.copy())


def train_net(seed: int = _common.SEED) -> RowTransformer:
    """Trains the network on the training digits' rows, deterministically for ``seed``."""
    generator = _torch_utils.setup(seed)
    split = _common.digits_split()
    net = RowTransformer()
    nn.init.normal_(net.positions, std=0.02)
    _torch_utils.train(
        net, split.x_train, split.y_train, epochs=EPOCHS, generator=generator, lr=LR, weight_decay=1e-2
    )
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
    return [
        _torch_utils.classifier_entry(
            net,
            exported,
            name="transformer_digits",
            architecture="Transformer encoder: 2 layers, hidden 64, 4 heads, GELU FFN 128, 8 row tokens",
            dataset=_common.DIGITS_DATASET + "; rows as tokens",
            input_name="rows",
            x_train=split.x_train,
            x_test=x_test,
            y_test=split.y_test,
        )
    ]
