"""BERT-like encoder at a realistic width (PyTorch), RANDOM WEIGHTS: for speed only.

MiniLM-L6-H384-sized: vocabulary 30522, 6 post-LN layers, hidden 384, 6 heads, FFN 1536
(GELU), learned positions (max 512), tanh pooler; ~22.5M parameters, ~90 MB. Weights
are random with BERT's initialisation (normal, std 0.02), not trained: use it for
latency, size and numeric-fidelity measurements, not accuracy. Inputs ``input_ids`` and
``attention_mask`` int64 [batch, sequence] (both dims dynamic); outputs
``last_hidden_state`` [batch, sequence, 384] and ``pooler_output`` [batch, 384]. The
metric is the mean cosine similarity of ``last_hidden_state`` (per sample, flattened) to
PyTorch's FP32 output on 32 padded sequences of 128 tokens: FP32 scores ~1.0, and a
transformation's drop shows its numeric error. (With random weights the pooled output
barely depends on the input, cosine ~0.999 between different inputs, so it is no
measure; the hidden states' cosine to their own mean is ~0.8.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import _common, _export, _torch_utils, _transformer

ENTRIES = ("bert_like",)
VOCAB = 30522
HIDDEN = 384
LAYERS = 6
HEADS = 6
FFN = 1536
MAX_POSITIONS = 512
SEQUENCE = 128
EVAL_SAMPLES = 32


class BertLike(nn.Module):
    """Embeddings (word + position, LayerNorm), 6 encoder layers, tanh pooler on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.embeddings_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(_transformer.EncoderLayer(HIDDEN, HEADS, FFN) for _ in range(LAYERS))
        self.pooler = nn.Linear(HIDDEN, HIDDEN)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], dtype=torch.long)[None, :]
        x = self.embeddings_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        bias = _transformer.mask_to_bias(attention_mask)
        for layer in self.layers:
            x = layer(x, bias)
        return x, torch.tanh(self.pooler(x[:, 0]))


def init_like_bert(module: nn.Module) -> None:
    """BERT's initialisation: weights ~ N(0, 0.02), biases 0, LayerNorm (1, 0)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Embedding):
            nn.init.normal_(sub.weight, std=0.02)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
        if isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def token_batch(rng: np.random.Generator, count: int, length: int = SEQUENCE) -> dict[str, np.ndarray]:
    """Random token ids ([CLS]=101 first, lengths 16..length, padded with 0) and their mask."""
    ids = rng.integers(1000, VOCAB, size=(count, length))
    ids[:, 0] = 101
    lengths = rng.integers(min(16, length), length + 1, size=count)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": (ids * mask).astype(np.int64), "attention_mask": mask}


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Initialises (no training), exports with dynamic batch and sequence, packages the entry."""
    del workdir
    _torch_utils.setup(threads=2)
    net = BertLike()
    init_like_bert(net)
    net.eval()
    held_out = token_batch(np.random.default_rng(1128), EVAL_SAMPLES)
    reference = _torch_utils.predict(net, held_out["input_ids"], held_out["attention_mask"])
    short = token_batch(np.random.default_rng(1064), 16, 64)
    short_reference = _torch_utils.predict(net, short["input_ids"], short["attention_mask"])
    example = token_batch(np.random.default_rng(0), 2)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=MAX_POSITIONS)
    exported = _export.export_torch(
        net,
        (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        output_names=["last_hidden_state", "pooler_output"],
    )
    return [
        _common.BuiltModel(
            name="bert_like",
            model=exported.model,
            architecture=f"BERT-like encoder: {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, FFN {FFN}, "
            f"vocab {VOCAB}, seq {SEQUENCE}",
            source_framework="pytorch",
            route="torch.onnx (dynamo), dynamic batch and sequence",
            converter=exported.converter,
            params=_torch_utils.count_params(net),
            dataset=f"random token ids (seeded), {EVAL_SAMPLES} x {SEQUENCE} tokens, padded",
            metric=_common.Metric("cosine_vs_fp32", "cosine"),
            held_out=_common.Evaluation(held_out, reference),
            calib=token_batch(np.random.default_rng(2128), _common.CALIB_SAMPLES),
            reference=reference,
            trained=False,
            notes="random weights (BERT init, std 0.02), not trained: for speed and numeric fidelity only",
            extra_evals={"cosine_vs_fp32@sequence=64": _common.Evaluation(short, short_reference)},
            details={"dynamic_dims": {"input_ids": {"0": "batch", "1": "sequence"}}},
        )
    ]
