"""fold-conv-add-bias: ``Add(Conv(x, W[, B]), c)`` with a per-channel (or scalar) constant c -> Conv bias.

onnxscript's ``_fuse_conv_affine`` folds only a *scalar* Mul + Add after a Conv that has
a bias already; a per-channel Add (what exporters emit for a Conv bias kept apart, e.g.
after a Keras/TF conversion) has no shipped rule, so it is written here. The constant
must broadcast only along the channel axis and must not raise the Conv output's rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, fresh_name, local_constant


def per_channel(values: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """``values`` as a [channels] vector if it broadcasts over an NC... output only along axis 1."""
    if values.ndim > out_rank:
        return None
    if values.size == 1:
        return np.full(channels, values.reshape(()), dtype=values.dtype)
    padded = values.reshape((1,) * (out_rank - values.ndim) + values.shape)
    others = [d for i, d in enumerate(padded.shape) if i != 1]
    if any(d != 1 for d in others) or padded.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).copy()


class FoldAddIntoConvBias(RewriteRuleClassBase):
    def pattern(self, op, x, w, c):  # type: ignore[no-untyped-def]
        return op.Add(op.Conv(x, w, _allow_other_inputs=True, _outputs=["conv_out"]), c)

    def check(self, context, x, w, c, conv_out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        graph = context.graph_or_function
        weight = local_constant(w, graph)
        if weight is None:
            return result.fail(f"Conv weight '{w.name}' is not a constant of this graph")
        conv = conv_out.producer()
        bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
        if bias_in is not None and local_constant(bias_in, graph) is None:
            return result.fail(f"Conv bias '{bias_in.name}' is not a constant of this graph")
        added = constant(c)
        if added is None:
            return result.fail(f"Add operand '{c.name}' is not constant")
        if added.dtype != weight.dtype:
            return result.fail("Add operand and Conv weight differ in type")
        if per_channel(added, weight.ndim, weight.shape[0]) is None:
            return result.fail(f"Add operand '{c.name}' of shape {list(added.shape)} is not per-channel")
        return result

    def rewrite(self, op, x, w, c, conv_out):  # type: ignore[no-untyped-def]
        conv = conv_out.producer()
        weight = constant(w)
        assert weight is not None
        channels = weight.shape[0]
        added = per_channel(constant(c), weight.ndim, channels)  # type: ignore[arg-type]
        bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
        old = constant(bias_in) if bias_in is not None else np.zeros(channels, weight.dtype)
        bias = (old.astype(np.float64) + added.astype(np.float64)).astype(weight.dtype)  # type: ignore[union-attr]
        name = fresh_name(w.graph, f"{w.name}_bias")
        return op.Conv(x, w, op.initializer(ir.tensor(bias), name=name), **conv.attributes)


class FoldConvAddBias(RewritePass):
    name: ClassVar[str] = "fold-conv-add-bias"
    summary: ClassVar[str] = "Fold Add of a per-channel constant after Conv into the Conv bias"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (Rule(FoldAddIntoConvBias.rule(name="fold-conv-add-bias"), "biases_folded", commute=True),)
