"""What each model output holds, and the fidelity measure that fits it.

Outputs are not all class scores. A measure that fits the wrong kind misjudges: the arg-max of an
embedding vector says nothing about retrieval, and the raveled SQNR of a CTC sequence hides a
changed transcription. Kinds, read from the output's rank and the ops that produce it:

- ``class_scores``: ``[N, C]``, ``C > 1``, made by a linear layer (Gemm / MatMul / Conv, possibly
  through Softmax, LogSoftmax, Sigmoid, Add, Reshape, Flatten, Squeeze): top-1 agreement.
- ``sequence``: ``[T, N, C]`` / ``[N, T, C]``, ``C > 1``, made the same way (CTC heads, per-step
  classifiers): whole-sequence agreement after greedy CTC decoding (repeats collapsed, the blank,
  read as the class the float model emits most, removed), one sequence per sample and batch row.

Both decision measures excuse the float model's own ties: a row (or step) where FP32 prefers its
class over the quantized model's by less than 2:1 (``TIE_LOG_ODDS``, on logits, log-probabilities
or probabilities) is decided by noise in either model, so changing it is not a disagreement; the
exact agreement is reported beside it.
- ``tensor``: everything else (probabilities of one class, regressions, embeddings, detection
  maps, masks): SQNR and cosine.

Hand-written: no library classifies ONNX outputs; the rules are deliberately few and conservative
(an embedding normalized by Div / LpNormalization / ReduceMean is never taken for class scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

CLASS_SCORES = "class_scores"
SEQUENCE = "sequence"
TENSOR = "tensor"
KINDS = (CLASS_SCORES, SEQUENCE, TENSOR)

#: Ops a classifier head may end with after its linear layer. Not Sigmoid: per-class sigmoids are
#: multi-label probabilities (a music transcriber's note maps), not one decision per row.
_PASS_THROUGH = frozenset({"Softmax", "LogSoftmax", "Add", "Reshape", "Flatten", "Squeeze",
                           "Identity", "Cast", "Transpose", "Relu", "Unsqueeze", "GlobalAveragePool"})
_LINEAR = frozenset({"Gemm", "MatMul", "Conv", "QGemm", "QLinearMatMul", "MatMulInteger", "FusedMatMul",
                     "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Einsum"})


def _linear_head(value: ir.Value, depth: int = 8) -> bool:
    """Whether ``value`` comes from a linear layer through only classifier-head ops."""
    pooled = False
    for _ in range(depth):
        node = value.producer()
        if node is None:
            return False
        if node.op_type in _LINEAR:
            # NOTE: a mean over a convolution's feature map is a CNN's global pooling (Keras exports it
            # as ReduceMean); a mean elsewhere is an embedding's pooling.
            return not pooled or node.op_type == "Conv"
        if node.op_type == "ReduceMean":
            pooled = True
            value = node.inputs[0]  # type: ignore[assignment]
            if value is None:
                return False
            continue
        if node.op_type == "Div" and node.inputs[0] is not None and node.inputs[0].producer() is not None \
                and node.inputs[0].producer().op_type == "Exp":  # type: ignore[union-attr]
            # NOTE: a softmax written out (Exp / ReduceSum(Exp), often Exp(x - max)), as jax2tf and
            # some other exporters emit it
            value = node.inputs[0].producer().inputs[0]  # type: ignore[union-attr]
            inner = value.producer() if value is not None else None
            if inner is not None and inner.op_type == "Sub":
                value = inner.inputs[0]
            if value is None:
                return False
            continue
        if node.op_type not in _PASS_THROUGH:
            return False
        inputs = [v for v in node.inputs if v is not None and v.const_value is None]
        if not inputs:
            return False
        value = inputs[0]
    return False


def output_kinds(model: ir.Model) -> dict[str, str]:
    """The kind of every graph output, by name (see the module docstring)."""
    kinds = {}
    for value in model.graph.outputs:
        kind = TENSOR
        rank = len(value.shape) if value.shape is not None else None
        last = value.shape[-1] if value.shape is not None and rank else None
        wide = not isinstance(last, int) or last > 1
        if value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE) and wide and _linear_head(value):
            # NOTE: the declared rank may be wrong (a CTC head declared [1, seqlen]); kind_of_arrays
            # settles class scores against sequences on the real arrays.
            kind = {3: SEQUENCE}.get(rank or 0, CLASS_SCORES)
        kinds[str(value.name)] = kind
    return kinds


def kind_of_arrays(kind: str, refs: Sequence[np.ndarray]) -> str:
    """``kind`` settled on the float model's real arrays (declared shapes can be wrong): a decision
    output (class scores or sequence) is class scores when 2-D, a sequence when 3-D."""
    if kind not in (CLASS_SCORES, SEQUENCE) or not refs:
        return TENSOR
    if all(np.ndim(r) == 2 and np.shape(r)[1] > 1 for r in refs):
        return CLASS_SCORES
    if all(np.ndim(r) == 3 and np.shape(r)[2] > 1 for r in refs):
        return SEQUENCE
    return TENSOR


#: A decision the float model itself barely makes is a tie, not a fact to agree with: the float
#: model preferring its own class over the quantized model's by less than 2:1 (log-odds ln 2).
#: Measured on a captcha reader (8210 classes): the weight-INT8 model (36.5 dB) changed 16 of 2400
#: frames, every one where FP32's top-2 log-odds were below 0.58; the static INT8 model (18 dB)
#: changed 57, 14 of them where FP32 was decided by more than e (up to 8.2).
TIE_LOG_ODDS = math.log(2.0)


def _log_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as log-odds units: logits and log-probabilities as they are, probabilities as logs."""
    x = np.asarray(scores, np.float64)
    if x.size and x.min() >= 0.0 and x.max() <= 1.0 and np.allclose(x.sum(-1), 1.0, atol=1e-3):
        return np.log(np.maximum(x, 1e-30))
    return x


def decided(ref: np.ndarray, got: np.ndarray, *, tie: float = TIE_LOG_ODDS) -> np.ndarray:
    """Per row (all axes but the last): the arg-maxes agree, or the float model's preference for
    its own class over the quantized model's is below ``tie`` log-odds (a tie it decides by noise).
    ``tie=0`` asks for the exact arg-max."""
    a, b = np.argmax(ref, -1), np.argmax(got, -1)
    if tie <= 0:
        return a == b
    logs = _log_scores(ref)
    gap = np.take_along_axis(logs, a[..., None], -1)[..., 0] - np.take_along_axis(logs, b[..., None], -1)[..., 0]
    return (a == b) | (gap < tie)


def top1_agreement(refs: Sequence[np.ndarray], gots: Sequence[np.ndarray], *, tie: float = TIE_LOG_ODDS) -> float:
    """Share of rows of ``[N, C]`` scores whose arg-max agrees (FP32 ties excused: :func:`decided`)."""
    agree = sum(int(np.sum(decided(r, g, tie=tie))) for r, g in zip(refs, gots, strict=True))
    return agree / max(sum(np.shape(r)[0] for r in refs), 1)


def _decode(steps: np.ndarray, blank: int) -> tuple[int, ...]:
    keep = np.ones(steps.shape, bool)
    keep[1:] = steps[1:] != steps[:-1]
    return tuple(int(s) for s in steps[keep & (steps != blank)])


def sequence_agreement(refs: Sequence[np.ndarray], gots: Sequence[np.ndarray], *,
                       tie: float = TIE_LOG_ODDS) -> float:
    """Share of sequences whose greedy CTC decoding agrees (one per sample and batch row).

    The time axis is the longer of the two leading axes ``[T, N, C]`` / ``[N, T, C]`` (the batch
    axis of a single sample is 1); the blank is the class the float model emits most. A sequence
    whose only changed steps are float-model ties (:func:`decided`) agrees.
    """
    counts = np.bincount(np.concatenate([np.argmax(r, -1).ravel() for r in refs]))
    blank = int(np.argmax(counts)) if counts.size else 0
    agree = total = 0
    for r, g in zip(refs, gots, strict=True):
        rs, gs = np.argmax(r, -1), np.argmax(g, -1)
        ok = decided(r, g, tie=tie)
        if rs.shape[0] > rs.shape[1]:  # [T, N] -> [N, T]
            rs, gs, ok = rs.T, gs.T, ok.T
        for a, b, steps in zip(rs, gs, ok, strict=True):
            agree += bool(steps.all()) or _decode(a, blank) == _decode(b, blank)
            total += 1
    return agree / max(total, 1)
