"""4-bit block quantization of a ``[K, N]`` MatMul weight: round to nearest, GPTQ, AWQ, and the
``com.microsoft.MatMulNBits`` packing.

Hand-written in numpy: onnxruntime's own GPTQ (vendored from Intel Neural Compressor) keeps every
calibration feed in memory, re-derives each block's scale from the already rounded weights (a
second rounding that can move codes off GPTQ's grid), and has no AWQ; its round to nearest is in
C++ behind ``MatMulNBitsQuantizer``, which this module matches code for code (tested) so that the
calibrated algorithms share one packing.

Conventions (onnxruntime's, ``MlasQuantizeBlockwise``): blocks of ``block`` consecutive rows of K
per column; symmetric: ``scale = m / -8`` where ``m`` is the block's value of largest magnitude,
codes ``clip(round(w / scale) + 8, 0, 15)`` (zero point 8, not stored); asymmetric: the range
``[min(w, 0), max(w, 0)]`` over 15 steps, zero point ``round(-min / scale)``. Rounding is half
away from zero on ``w * (1 / scale) + zero_point``, in float32, as the C++ does.

The calibrated algorithms see the activations only through ``H = sum X^T X`` over calibration
rows (K x K, accumulated while streaming: memory does not grow with the samples):

- GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers", ICLR 2023; the reference ``fasterquant``): columns of K quantized in order, each
  one's error spread over the rows not yet quantized through the Cholesky factor of ``H^-1``, with
  lazy block updates, dampening, and act-order with static groups (block scales fixed from the
  original weight, so blocks stay contiguous in K as MatMulNBits needs).
- AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
  Acceleration", MLSys 2024; llm-awq's ``auto_scale`` and ``auto_clip``): input channels scaled
  by ``mean|x|^alpha`` (alpha on a grid) before rounding, the inverse scale moved onto the
  activation; then, per block and column, the clipping ratio of the range. Both searches score
  the output error ``||X dW||^2 = tr(dW^T H dW)`` exactly from ``H``, so no activation is stored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BITS = 4
#: Relative dampening of H's diagonal (GPTQ's ``percdamp``).
DAMP = 0.01
#: Columns of K GPTQ updates at once before propagating to the rest (its ``blocksize``).
LAZY = 128
#: AWQ's grid of alpha and of clipping ratios (llm-awq: 20 steps; clipping down to 0.5).
AWQ_GRID = 20
CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(11))


@dataclasses.dataclass
class Blocks:
    """A ``[K, N]`` weight in 4-bit blocks along K: codes 0..15, one scale (and zero point) per block."""

    codes: np.ndarray  # uint8 [K_padded, N]
    scales: np.ndarray  # float32 [blocks, N]
    zero_points: np.ndarray  # uint8 [blocks, N]
    block: int
    symmetric: bool
    bits: int = BITS

    def dequantize(self, k: int | None = None) -> np.ndarray:
        """The float weight the codes stand for, ``[k, N]`` (padding dropped)."""
        scale = np.repeat(self.scales, self.block, axis=0)
        zero = np.repeat(self.zero_points.astype(np.float32), self.block, axis=0)
        w = (self.codes.astype(np.float32) - zero) * scale
        return w[: k if k is not None else len(w)]


def pad_rows(w: np.ndarray, block: int) -> np.ndarray:
    """``w`` with zero rows appended up to a multiple of ``block``."""
    extra = -len(w) % block
    return np.concatenate([w, np.zeros((extra, w.shape[1]), w.dtype)]) if extra else w


def block_params(w: np.ndarray, symmetric: bool, ratio: np.ndarray | float = 1.0,
                 bits: int = BITS) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each block of ``w`` (``[..., rows, N]``: the rows are one block),
    range times ``ratio``; both ``[..., N]``."""
    w = np.asarray(w, np.float32)
    levels, mid = 2**bits - 1, 2 ** (bits - 1)
    if symmetric:
        index = np.abs(w).argmax(axis=-2)[..., None, :]
        extreme = np.take_along_axis(w, index, axis=-2)[..., 0, :] * ratio
        scale = (extreme / np.float32(-mid)).astype(np.float32)
        zero = np.full(scale.shape, mid, np.uint8)
    else:
        lo = np.minimum(w.min(axis=-2), 0) * ratio
        hi = np.maximum(w.max(axis=-2), 0) * ratio
        scale = ((hi - lo) / np.float32(levels)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            point = np.where(scale != 0, -lo / np.where(scale != 0, scale, 1), 0)
        zero = np.clip(np.floor(point + 0.5), 0, levels).astype(np.uint8)
    return scale, zero


def to_codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int = BITS) -> np.ndarray:
    """``clip(round_half_away(w * (1 / scale) + zero), 0, 2^bits - 1)`` in float32 (0 where scale is 0)."""
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
    x = np.asarray(w, np.float32) * reciprocal + zero.astype(np.float32)
    return np.clip(np.floor(x + np.float32(0.5)), 0, 2**bits - 1).astype(np.uint8)


def rtn(w: np.ndarray, block: int, symmetric: bool = True, ratios: np.ndarray | None = None,
        bits: int = BITS) -> Blocks:
    """Round to nearest per block (``ratios``: ``[blocks, N]`` clipping of each block's range);
    ``bits`` 4 or 8."""
    w = pad_rows(np.asarray(w, np.float32), block)
    parts = w.reshape(-1, block, w.shape[1])
    scales, zeros = block_params(parts, symmetric, 1.0 if ratios is None else ratios, bits)
    codes = to_codes(parts, scales[:, None, :], zeros[:, None, :], bits).reshape(w.shape)
    return Blocks(codes, scales, zeros, block, symmetric, bits)


#: HQQ's defaults (Badri & Shaji 2023; onnxruntime's ``HQQWeightOnlyQuantizer`` and the hqq library).
HQQ_LP, HQQ_BETA, HQQ_KAPPA, HQQ_ITERS = 0.7, 10.0, 1.01, 20
#: Weights HQQ iterates on at once (columns are independent; its temporaries are a few times this).
HQQ_CHUNK = 1 << 21


def hqq(w: np.ndarray, block: int, bits: int = BITS, *, lp: float = HQQ_LP, beta: float = HQQ_BETA,
        kappa: float = HQQ_KAPPA, iters: int = HQQ_ITERS) -> Blocks:
    """Half-quadratic quantization (Badri & Shaji, "Half-Quadratic Quantization of Large Machine
    Learning Models", 2023), calibration-free: asymmetric min-max blocks whose zero point is then
    optimized against a sparsity-promoting l_p (p < 1) error, by alternating a generalized
    soft-threshold of the error with the zero point's closed-form update, as onnxruntime's
    ``HQQWeightOnlyQuantizer.optimize_weights`` does (same parameters and stop rule: the first
    iteration whose mean absolute error does not improve). The zero points stay float (MatMulNBits
    takes them as floats, its slower kernel); numpy, one weight at a time (onnxruntime's needs torch
    and the whole model)."""
    w = pad_rows(np.asarray(w, np.float32), block)
    columns = max(1, HQQ_CHUNK // len(w))
    if w.shape[1] > columns:
        # NOTE: columns are independent: a slice at a time bounds the iteration's temporaries
        # (a 4096 x 4096 weight whole took 1.25 GB of peak RSS in bench_large_quantize)
        done = [hqq(w[:, i:i + columns], block, bits, lp=lp, beta=beta, kappa=kappa, iters=iters)
                for i in range(0, w.shape[1], columns)]
        return Blocks(np.concatenate([b.codes for b in done], axis=1), np.concatenate([b.scales for b in done], axis=1),
                      np.concatenate([b.zero_points for b in done], axis=1), block, False, bits)
    parts = w.reshape(-1, block, w.shape[1])
    levels = 2**bits - 1
    lo, hi = parts.min(axis=1, keepdims=True), parts.max(axis=1, keepdims=True)
    span = np.where(hi - lo == 0, levels, hi - lo)
    inverse = np.minimum(levels / span, 2e4).astype(np.float32)  # NOTE: 1 / scale, as hqq keeps it
    zero = np.round(-lo * inverse).astype(np.float32)
    best = np.inf
    for _ in range(iters):
        q = np.clip(np.round(parts * inverse + zero), 0, levels)
        r = (q - zero) / inverse
        d = parts - r
        e = np.sign(d) * np.maximum(np.abs(d) - (1.0 / beta) * np.power(np.abs(d) + 1e-8, lp - 1), 0)
        zero = np.mean(q - (parts - e) * inverse, axis=1, keepdims=True).astype(np.float32)
        beta *= kappa
        error = float(np.abs(d).mean())
        if error < best:
            best = error
        else:
            break
    codes = np.clip(np.round(parts * inverse + zero), 0, levels).astype(np.uint8).reshape(w.shape)
    return Blocks(codes, (1.0 / inverse[:, 0, :]).astype(np.float32), zero[:, 0, :], block, False, bits)


def dampened_inverse_factor(h: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``, and the dead-input mask."""
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    # NOTE: chol(H^-1) upper = the reference's cholesky_inverse then cholesky(upper=True)
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky(inverse).T, dead


def gptq(w: np.ndarray, h: np.ndarray, block: int, symmetric: bool = True, *, damp: float = DAMP,
         act_order: bool = False, lazy: int = LAZY) -> Blocks:
    """GPTQ of ``w`` ``[K, N]`` with ``h = X^T X`` ``[K, K]`` (see the module docstring)."""
    k = len(w)
    w = pad_rows(np.array(w, np.float64), block)
    padded = len(w)
    if padded != k:
        grown = np.zeros((padded, padded))
        grown[:k, :k] = h
        h = grown
    w[np.diag(h) == 0] = 0.0  # NOTE: inputs never seen: their rows contribute nothing
    count = padded // block
    scales = np.empty((count, w.shape[1]), np.float32)
    zeros = np.empty((count, w.shape[1]), np.uint8)
    order = np.arange(padded)
    if act_order:
        # NOTE: static groups (AutoGPTQ's static_groups): every block's scale comes from the
        # original weight, so the blocks stay contiguous rows of K whatever the order
        for b in range(count):
            scales[b], zeros[b] = block_params(w[b * block:(b + 1) * block], symmetric)
        order = np.argsort(-np.diag(h), kind="stable")
        w = w[order]
        h = np.asarray(h, np.float64)[order][:, order]
    factor, _ = dampened_inverse_factor(h, damp)
    codes = np.empty(w.shape, np.uint8)
    lazy = max(block, lazy - lazy % block)
    for start in range(0, padded, lazy):
        stop = min(start + lazy, padded)
        part = w[start:stop].copy()
        errors = np.zeros_like(part)
        inv = factor[start:stop, start:stop]
        for i in range(stop - start):
            row = order[start + i]
            b = row // block
            if not act_order and (start + i) % block == 0:
                # NOTE: from the weight as updated so far (the reference reads the stale copy)
                scales[b], zeros[b] = block_params(part[i:i + block], symmetric)
            q = to_codes(part[i], scales[b], zeros[b])
            codes[start + i] = q
            dequantized = (q.astype(np.float64) - zeros[b]) * scales[b]
            err = (part[i] - dequantized) / inv[i, i]
            part[i:] -= np.outer(inv[i, i:], err)
            errors[i] = err
        w[stop:] -= factor[start:stop, stop:].T @ errors
    if act_order:
        unordered = np.empty_like(codes)
        unordered[order] = codes
        codes = unordered
    return Blocks(codes, scales, zeros, block, symmetric)


def output_error(dw: np.ndarray, h: np.ndarray) -> float:
    """``||X dW||^2 = tr(dW^T H dW)`` for ``dW`` ``[K, N]``."""
    return float(np.einsum("kn,kn->", h @ dw, dw))


def awq_scales(weights: list[np.ndarray], h: np.ndarray, mean_abs: np.ndarray, block: int, symmetric: bool,
               grid: int = AWQ_GRID) -> tuple[np.ndarray, float]:
    """Per-input-channel scales ``s`` (weights' rows times ``s``, activation divided by it) minimizing
    the consumers' output error after round to nearest; ``alpha`` 0 (no scaling) is on the grid.

    ``h`` is ``X^T X`` of the shared activation, ``mean_abs`` its ``mean|x|`` per channel.
    """
    k = len(mean_abs)
    best_err, best_s, best_alpha = np.inf, np.ones(k, np.float32), 0.0
    base = np.maximum(mean_abs, 1e-8)
    for step in range(grid):
        alpha = step / grid
        s = np.power(base, alpha)
        s = s / np.sqrt(s.max() * s.min())
        err = 0.0
        for w in weights:
            scaled = w * s[:, None]
            dq = rtn(scaled, block, symmetric).dequantize(k) / s[:, None]
            err += output_error(w.astype(np.float64) - dq, h)
        if err < best_err:
            best_err, best_s, best_alpha = err, s.astype(np.float32), alpha
    return best_s, best_alpha


def awq_clip_ratios(w: np.ndarray, h: np.ndarray, block: int, symmetric: bool,
                    ratios: tuple[float, ...] = CLIP_RATIOS) -> np.ndarray:
    """Per block and column, the clipping ratio of the range whose rounding error through that
    block's rows of ``H`` is smallest (llm-awq's ``auto_clip``): ``[blocks, N]``."""
    k = len(w)
    padded = pad_rows(np.asarray(w, np.float32), block)
    hp = np.zeros((len(padded), len(padded)))
    hp[:k, :k] = h
    count = len(padded) // block
    best = np.ones((count, w.shape[1]), np.float32)
    best_err = np.full((count, w.shape[1]), np.inf)
    parts = padded.reshape(count, block, -1)
    # NOTE: the diagonal blocks of H, one per block of rows: [blocks, block, block]
    diagonal = np.stack([hp[b * block:(b + 1) * block, b * block:(b + 1) * block] for b in range(count)])
    for ratio in ratios:
        scale, zero = block_params(parts, symmetric, ratio)
        dq = (to_codes(parts, scale[:, None, :], zero[:, None, :]).astype(np.float32) - zero[:, None, :]) \
            * scale[:, None, :]
        d = (parts - dq).astype(np.float64)
        err = np.einsum("bkn,bkn->bn", diagonal @ d, d)
        better = err < best_err
        best_err[better] = err[better]
        best[better] = ratio
    return best


def pack(blocks: Blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits inputs: ``B`` uint8 ``[N, blocks, block / 2]`` (4 bits: low nibble first; 8 bits:
    ``[N, blocks, block]``), ``scales`` ``[N * blocks]``, zero points ``[N * ceil(blocks / 2)]``
    packed the same way (8 bits: ``[N * blocks]``), None when symmetric."""
    codes = blocks.codes.T  # [N, K_padded]
    n = codes.shape[0]
    count = blocks.scales.shape[0]
    if blocks.bits == 8:
        scales = np.ascontiguousarray(blocks.scales.T).reshape(-1).astype(np.float32)
        zp = None if blocks.symmetric else np.ascontiguousarray(blocks.zero_points.T).reshape(-1)
        return np.ascontiguousarray(codes.reshape(n, count, blocks.block)), scales, zp
    pairs = codes.reshape(n, count, blocks.block // 2, 2)
    b = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    scales = np.ascontiguousarray(blocks.scales.T).reshape(-1).astype(np.float32)
    if blocks.symmetric:
        return b, scales, None
    if blocks.zero_points.dtype.kind == "f":
        # NOTE: HQQ's float zero points: MatMulNBits takes them unpacked, in the scales' type
        return b, scales, np.ascontiguousarray(blocks.zero_points.T).reshape(-1).astype(np.float32)
    zeros = blocks.zero_points.T  # [N, blocks]
    if count % 2:
        zeros = np.concatenate([zeros, np.zeros((n, 1), np.uint8)], axis=1)
    zp = (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    return b, scales, zp
