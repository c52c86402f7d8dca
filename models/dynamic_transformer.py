"""Transformer over token sequences of any length (PyTorch), exported with dynamic dims.

Input ``input_ids`` int64 [batch, seq_len], both dims dynamic and named; sinusoidal
positions are computed from the runtime length, so the graph carries the
Shape -> Range -> ... subgraph that dynamic exports have. Task (generated, seeded): the
tokens are digits 0-9 drawn with one digit favoured; predict the most frequent digit
(ties are dropped). Trained on lengths 8-32; scored at 16 and also run at 6 and 48.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import _common, _export, _torch_utils, _transformer

ENTRIES = ("dynamic_transformer",)
VOCAB = 10
HIDDEN = 48
STEPS = 300
LR = 3e-3
BATCH = 64
TRAIN_LENGTHS = (8, 12, 16, 24, 32)
EVAL_LENGTH = 16
EVAL_SAMPLES = 512


class SequenceTransformer(nn.Module):
    """Token embedding + sinusoidal positions, 2 encoder layers, mean-pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(
            _transformer.EncoderLayer(HIDDEN, 4, 2 * HIDDEN, eps=1e-5) for _ in range(2)
        )
        self.classifier = nn.Linear(HIDDEN, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + _transformer.sinusoidal_positions(input_ids.shape[1], HIDDEN)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.mean(dim=1))


def majority_task(rng: np.random.Generator, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` sequences of ``length`` digits, each with a unique most frequent digit (the label)."""
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    while sum(len(x) for x in ids) < count:
        favoured = rng.integers(0, VOCAB, size=2 * count)
        tokens = rng.integers(0, VOCAB, size=(2 * count, length))
        pick = rng.random((2 * count, length)) < 0.05
        tokens = np.where(pick, favoured[:, None], tokens)
        counts = np.stack([(tokens == v).sum(axis=1) for v in range(VOCAB)], axis=1)
        top = np.sort(counts, axis=1)
        keep = top[:, -1] > top[:, -2]
        ids.append(tokens[keep])
        labels.append(counts[keep].argmax(axis=1))
    return np.concatenate(ids)[:count].astype(np.int64), np.concatenate(labels)[:count].astype(np.int64)


def _batches(rng: np.random.Generator) -> Iterator[_torch_utils.Batch]:
    while True:
        x, y = majority_task(rng, BATCH, int(rng.choice(TRAIN_LENGTHS)))
        yield torch.from_numpy(x), torch.from_numpy(y)


def _evaluation(seed: int, count: int, length: int) -> _common.Evaluation:
    x, y = majority_task(np.random.default_rng(seed), count, length)
    return _common.Evaluation({"input_ids": x}, y)


METRIC = _common.Metric("accuracy", "accuracy")


def held_out() -> _common.Evaluation:
    """The held-out sequences (length ``EVAL_LENGTH``) and their labels."""
    return _evaluation(1001, EVAL_SAMPLES, EVAL_LENGTH)


def train_net(seed: int = _common.SEED) -> SequenceTransformer:
    """Trains on freshly generated sequences, deterministically for ``seed``."""
    _torch_utils.setup(seed)
    net = SequenceTransformer()
    _torch_utils.train_steps(net, _batches(np.random.default_rng(seed)), steps=STEPS, lr=LR)
    return net


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains on generated sequences, exports with dynamic batch and length, packages the entry."""
    del workdir
    net = train_net()
    evaluation = held_out()
    batch, seq_len = torch.export.Dim("batch"), torch.export.Dim("seq_len", max=4096)
    exported = _export.export_torch(
        net,
        (torch.from_numpy(evaluation.inputs["input_ids"][:2]),),
        dynamic_shapes={"input_ids": {0: batch, 1: seq_len}},
        output_names=["logits"],
    )
    return [
        _common.BuiltModel(
            name="dynamic_transformer",
            model=exported.model,
            architecture="Transformer encoder: embedding + sinusoidal positions, 2 layers, hidden 48, 4 heads",
            source_framework="pytorch",
            route="torch.onnx (dynamo), dynamic batch and seq_len",
            converter=exported.converter,
            params=_torch_utils.count_params(net),
            dataset=f"generated: most frequent digit in a sequence (train lengths {TRAIN_LENGTHS}, "
            f"held-out length {EVAL_LENGTH})",
            metric=_common.Metric("accuracy", "accuracy"),
            held_out=evaluation,
            calib=_evaluation(2002, _common.CALIB_SAMPLES, EVAL_LENGTH).inputs,
            reference=_torch_utils.predict(net, evaluation.inputs["input_ids"]),
            extra_evals={
                "accuracy@seq_len=6": _evaluation(1006, 256, 6),
                "accuracy@seq_len=48": _evaluation(1048, 256, 48),
            },
            details={"dynamic_dims": {"input_ids": {"0": "batch", "1": "seq_len"}}},
        )
    ]
