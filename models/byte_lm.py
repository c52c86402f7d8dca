"""Byte-level decoder-only language model (PyTorch), TRAINED here on the Python standard library's
own source files, so its perplexity is real and every machine has the corpus.

Pre-LayerNorm GPT layout: byte embedding (256) + learned positions, 4 layers of causal
self-attention (4 heads) and a GELU MLP (hidden 256, FFN 1024), a final LayerNorm and an untied
LM head; ~3.3M parameters. Training files are the stdlib's top-level modules whose names start
with a-m, held-out text the others (n-z), both in sorted order; windows of 128 bytes. Input
``input_ids`` int64 [batch, sequence] (both dynamic, sequence up to 128), output ``logits``
[batch, sequence, 256]. The metric is next-byte accuracy on 64 held-out windows, with perplexity
(per byte) beside it. Trained for ``STEPS`` AdamW steps (a few minutes on 2 cores); the corpus
is the running Python's, so its version is part of the build hash.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import _common, _export, _torch_utils

ENTRIES = ("byte_lm",)
VOCAB = 256
HIDDEN = 256
LAYERS = 4
HEADS = 4
FFN = 1024
CONTEXT = 128
STEPS = 600
BATCH = 16
EVAL_WINDOWS = 64


def corpus() -> tuple[bytes, bytes]:
    """(training text, held-out text): the stdlib's top-level .py files, a-m and n-z."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    train = b"".join(p.read_bytes() for p in files if p.name[0].lower() <= "m")
    held = b"".join(p.read_bytes() for p in files if p.name[0].lower() > "m")
    return train, held


def windows(text: bytes, count: int, seed: int, length: int = CONTEXT + 1) -> np.ndarray:
    """``count`` windows of ``length`` bytes at seeded random offsets: int64 [count, length]."""
    data = np.frombuffer(text, np.uint8)
    starts = np.random.default_rng(seed).integers(0, len(data) - length, size=count)
    return np.stack([data[s:s + length] for s in starts]).astype(np.int64)


class Block(nn.Module):
    """Pre-LN decoder block: x + attn(ln(x)), x + mlp(ln(x)); attention spelled out (see _transformer)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        head_dim = self.hidden // self.heads
        q, k, v = self.qkv(self.ln1(x)).split(self.hidden, dim=-1)
        q, k, v = (t.view(batch, seq, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim) + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(batch, seq, self.hidden)
        x = x + self.proj(context)
        return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))


class Decoder(nn.Module):
    """Token embedding + learned positions, pre-LN blocks, final LayerNorm, untied LM head.

    The zoo's byte LM is the default size; ``tools/bench_int4.py`` makes a larger random-weight one.
    """

    def __init__(self, vocab: int = VOCAB, hidden: int = HIDDEN, layers: int = LAYERS, heads: int = HEADS,
                 ffn: int = FFN, context: int = CONTEXT) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.positions = nn.Parameter(torch.zeros(context, hidden))
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        x = self.embed(input_ids) + self.positions[:seq]
        # NOTE: the causal mask from the (dynamic) length: 0 on and below the diagonal, -1e4 above
        bias = torch.triu(torch.full((seq, seq), -1e4), diagonal=1)
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.ln(x))


def _batches(train: np.ndarray, generator: torch.Generator):  # type: ignore[no-untyped-def]
    data = torch.from_numpy(train)
    while True:
        starts = torch.randint(0, len(data) - CONTEXT - 1, (BATCH,), generator=generator)
        chunk = torch.stack([data[s:s + CONTEXT + 1] for s in starts.tolist()]).long()
        yield chunk[:, :-1], chunk[:, 1:]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains on the stdlib a-m, exports with dynamic batch and sequence, packages the entry."""
    del workdir
    generator = _torch_utils.setup(threads=2)
    train, held = corpus()
    net = Decoder()
    nn.init.normal_(net.positions, std=0.02)
    _torch_utils.train_steps(net, _batches(np.frombuffer(train, np.uint8).copy(), generator), steps=STEPS,
                             lr=2e-3, weight_decay=0.01, loss_fn=_loss)
    held_windows = windows(held, EVAL_WINDOWS, seed=1)
    held_inputs = {"input_ids": held_windows[:, :-1]}
    reference = _torch_utils.predict(net, held_inputs["input_ids"])
    calib = windows(train, _common.CALIB_SAMPLES, seed=2)[:, :-1]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=CONTEXT)
    exported = _export.export_torch(
        net, (torch.from_numpy(calib[:2]),),
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}}, output_names=["logits"])
    return [
        _common.BuiltModel(
            name="byte_lm",
            model=exported.model,
            architecture=f"decoder-only byte LM: {LAYERS} pre-LN layers, hidden {HIDDEN}, {HEADS} heads, "
            f"FFN {FFN}, context {CONTEXT}, untied head",
            source_framework="pytorch",
            route="torch.onnx (dynamo), dynamic batch and sequence",
            converter=exported.converter,
            params=_torch_utils.count_params(net),
            dataset=f"Python {'.'.join(map(str, __import__('sys').version_info[:2]))} stdlib source: "
            f"train a-m ({len(train)} bytes), held-out n-z ({len(held)} bytes), {EVAL_WINDOWS} windows "
            f"of {CONTEXT}",
            metric=_common.Metric("next_byte_accuracy", "accuracy", also=("perplexity",)),
            held_out=_common.Evaluation(held_inputs, held_windows[:, 1:]),
            calib={"input_ids": calib},
            reference=reference,
            details={"dynamic_dims": {"input_ids": {"0": "batch", "1": "sequence"}}, "steps": STEPS},
        )
    ]
