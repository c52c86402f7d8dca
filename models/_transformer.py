"""Transformer encoder pieces written out by hand (PyTorch), shared by the zoo's encoders.

Attention is spelled as MatMul -> scale -> (+mask) -> Softmax -> MatMul instead of
``nn.MultiheadAttention`` / ``scaled_dot_product_attention``, so every export gives the
plain ONNX pattern that fusion and quantization passes look for, whatever the exporter.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate Q/K/V projections (as in BERT)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``mask_bias`` [batch, 1, 1, seq] is added to the scores (0 keep, large negative drop)."""
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask_bias is not None:
            scores = scores + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        batch, _, seq, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """Post-LayerNorm encoder layer (BERT layout): attention, Add+LN, GELU FFN, Add+LN."""

    def __init__(self, hidden: int, heads: int, ffn: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, ffn)
        self.output = nn.Linear(ffn, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))


def mask_to_bias(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] additive bias (0 / -10000, as BERT does)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0


def sinusoidal_positions(seq_len: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[seq_len, dim] sine/cosine position encoding, computed from the (possibly dynamic) length."""
    position = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position * freq[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(seq_len, dim)
