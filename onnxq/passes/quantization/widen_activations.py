"""widen-activations: chosen QDQ node units of an 8-bit graph move to 16-bit activations (A16W8).

For a target whose 16-bit activations cost more than 8-bit ones (the QNN HTP), only the layers
that need it should pay: this pass takes an A8W8 QDQ graph and, for each selected node, rounds
its output at 16 bits (its Q / DQ parameters ``scale / 257``, zero point ``257 z``: the same real
range, 257x finer) and reads its inputs at 16 bits. The HTP refuses a node unit that mixes 8- and
16-bit tensors (measured on its simulator: one uint8 tensor in an A16W8 CNN sent its readers'
DequantizeLinear to the CPU), so every border gets a conversion,
``DequantizeLinear -> QuantizeLinear -> DequantizeLinear``, which the QNN EP runs as a Convert
op (onnxruntime's QNN recipe writes the same for its ``convert`` overrides):

- a widened node's 8-bit input: ``q16 = 257 q8`` exactly (the converted values are the 8-bit
  ones; the gain is in the widened node's own rounding and in what it passes on);
- an 8-bit reader of a widened output: rounded back to the original 8-bit parameters;
- data-movement readers (MaxPool, Reshape...: one scale through them) widen with their input;
- constant operands read through a DequantizeLinear (an Add's constant) and int32 biases
  (``x_scale * w_scale``) are rescaled exactly (x257, /257).

Weights stay 8-bit. 16-bit Q/DQ need opset 21: ``quantize`` converts the model first. Only
``uint8`` activations widen (to ``uint16``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.constants import constant_array
from onnxq.passes.quantization._common import (
    PASS_METADATA_KEY,
    NameScope,
    Selection,
    make_initializer,
    make_node,
)
from onnxq.targets.base import BIAS_INPUT, WEIGHT_INPUT, Target

FACTOR = 257  # 65535 / 255: the uint16 step of the same real range


def _is(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in ("", "ai.onnx")


class WidenActivations(Pass):
    name: ClassVar[str] = "widen-activations"
    summary: ClassVar[str] = "Chosen QDQ node units to 16-bit activations (A16W8), with converts at the borders"
    needs: ClassVar[tuple[type, ...]] = (Target,)

    @dataclasses.dataclass(frozen=True)
    class Options:
        include: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "nodes to widen: names, op types or regexes (':'-separated)"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        if not self.options.include:
            return PassResult(False, {})
        selection = Selection(tuple(self.options.include), ())
        graph = model.graph
        names = NameScope(model)
        state = _State(graph, names, target)
        state.selected = {n for n in graph if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                          and selection.selects(n)}
        for node in list(graph):
            if node not in state.selected:
                continue
            if node not in state.wide and state.widen_node(node):
                state.stats["nodes_widened"] += 1
        stats = {k: v for k, v in state.stats.items() if v}
        return PassResult(bool(stats), stats)


class _State:
    def __init__(self, graph: ir.Graph, names: NameScope, target: Target) -> None:
        self.graph, self.names, self.target = graph, names, target
        self.wide: set[ir.Node] = set()
        self.selected: set[ir.Node] = set()
        self.widened_q: set[ir.Node] = set()
        self.stats = {"nodes_widened": 0, "converts": 0, "constants_widened": 0, "biases_rescaled": 0}
        self._params: dict[tuple[ir.Value, ir.Value], tuple[ir.Value, ir.Value]] = {}

    # --- parameters ---------------------------------------------------------------------
    def wide_params(self, scale: ir.Value, zero: ir.Value) -> tuple[ir.Value, ir.Value] | None:
        """16-bit (scale, zero point) initializers for 8-bit ones: the same real range."""
        key = (scale, zero)
        if key not in self._params:
            s, z = constant_array(scale), constant_array(zero)
            if s is None or z is None or z.dtype != np.uint8 or s.size != 1:
                return None
            base = scale.name or "activation"
            self._params[key] = (
                make_initializer(self.graph, self.names, f"{base}_16", (s / np.float32(FACTOR)).astype(np.float32)),
                make_initializer(self.graph, self.names, f"{(zero.name or base)}_16",
                                 (z.astype(np.uint32) * FACTOR).astype(np.uint16)),
            )
        return self._params[key]

    # --- nodes --------------------------------------------------------------------------
    def widen_node(self, node: ir.Node) -> bool:
        """Output Q and activation inputs of ``node`` to 16 bits; False when it is no 8-bit QDQ unit."""
        q = self._output_q(node)
        inputs = [(i, v) for i, v in enumerate(node.inputs) if self._activation_slot(node, i, v)]
        if q is None and not inputs:
            return False
        self.wide.add(node)
        scales: dict[int, np.ndarray] = {}
        for slot, value in inputs:
            dq = value.producer()
            assert dq is not None
            if self._is_wide(dq):
                scales[slot] = constant_array(dq.inputs[1])  # type: ignore[assignment]
                continue
            if dq.inputs[0] is not None and dq.inputs[0].const_value is not None:
                if len(dq.outputs[0].uses()) > 1:
                    # NOTE: a constant's DQ shared with other readers: this node gets its own copy
                    dq = self._own_copy(node, slot, dq)
                scales[slot] = self._widen_constant(dq)
                continue
            new = self._convert(value, dq.inputs[1], dq.inputs[2], to_wide=True)  # type: ignore[arg-type]
            if new is None:
                continue
            node.replace_input_with(slot, new.outputs[0])
            scales[slot] = constant_array(new.inputs[1])  # type: ignore[assignment]
        self._rescale_bias(node, scales.get(0))
        if q is not None:
            self._widen_q(q)
        return True

    def _activation_slot(self, node: ir.Node, slot: int, value: ir.Value | None) -> bool:
        dq = value.producer() if value is not None else None
        if not _is(dq, "DequantizeLinear") or WEIGHT_INPUT.get(node.op_type) == slot:
            return False
        if BIAS_INPUT.get(node.op_type) == slot:
            return False
        zero = constant_array(dq.inputs[2]) if len(dq.inputs) > 2 else None  # type: ignore[union-attr]
        return zero is not None and zero.dtype in (np.uint8, np.uint16)

    def _is_wide(self, dq: ir.Node) -> bool:
        zero = constant_array(dq.inputs[2]) if len(dq.inputs) > 2 else None
        return zero is not None and zero.dtype == np.uint16

    def _output_q(self, node: ir.Node) -> ir.Node | None:
        if not node.outputs:
            return None
        out = node.outputs[0]
        uses = list(out.uses())
        if len(uses) == 1 and uses[0].node.op_type in self.target.absorbed_ops:
            uses = list(uses[0].node.outputs[0].uses())
        qs = [u.node for u in uses if _is(u.node, "QuantizeLinear")]
        return qs[0] if len(qs) == 1 and len(uses) == 1 else None

    def _widen_q(self, q: ir.Node) -> None:
        """``q`` and its DequantizeLinear readers to 16 bits; 8-bit readers get a convert back."""
        if q in self.widened_q:
            return
        params = self.wide_params(q.inputs[1], q.inputs[2])  # type: ignore[arg-type]
        if params is None:
            return
        self.widened_q.add(q)
        old_scale, old_zero = q.inputs[1], q.inputs[2]
        q.replace_input_with(1, params[0])
        q.replace_input_with(2, params[1])
        q.outputs[0].type = ir.TensorType(ir.DataType.UINT16)  # NOTE: not the type object a clone shares
        for use in list(q.outputs[0].uses()):
            dq = use.node
            if not _is(dq, "DequantizeLinear"):
                continue
            dq.replace_input_with(1, params[0])
            dq.replace_input_with(2, params[1])
            for reader_use in list(dq.outputs[0].uses()):
                reader = reader_use.node
                if reader in self.wide or reader in self.selected:
                    continue
                if reader.op_type in self.target.data_movement_ops and (inner := self._output_q(reader)) is not None:
                    # NOTE: one scale through data movement: it widens with its input
                    self.wide.add(reader)
                    self._widen_q(inner)
                    continue
                if reader.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    continue
                back = self._convert(dq.outputs[0], old_scale, old_zero, to_wide=False)  # type: ignore[arg-type]
                if back is not None:
                    reader.replace_input_with(reader_use.idx, back.outputs[0])

    def _convert(self, value: ir.Value, scale: ir.Value, zero: ir.Value, *, to_wide: bool) -> ir.Node | None:
        """``value`` (dequantized) -> Q -> DQ at the other width; returns the new DQ."""
        if to_wide:
            params = self.wide_params(scale, zero)
            if params is None:
                return None
            scale, zero = params
        dtype = ir.DataType.UINT16 if to_wide else ir.DataType.UINT8
        base = value.name or "converted"
        q = make_node(WidenActivations.name, self.names, "QuantizeLinear", [value, scale, zero],
                      base=f"{base}_to{16 if to_wide else 8}", output_dtype=dtype, shape=value.shape)
        dq = make_node(WidenActivations.name, self.names, "DequantizeLinear", [q.outputs[0], scale, zero],
                       base=f"{base}_as{16 if to_wide else 8}", output_dtype=ir.DataType.FLOAT, shape=value.shape)
        producer = value.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, [q, dq])
        else:
            self.graph.insert_before(next(iter(self.graph)), [q, dq])
        self.stats["converts"] += 1
        return dq

    def _own_copy(self, node: ir.Node, slot: int, dq: ir.Node) -> ir.Node:
        copy = make_node(WidenActivations.name, self.names, "DequantizeLinear", list(dq.inputs),
                         base=f"{dq.outputs[0].name or 'constant'}_own", output_dtype=ir.DataType.FLOAT,
                         shape=dq.outputs[0].shape)
        self.graph.insert_before(node, copy)
        node.replace_input_with(slot, copy.outputs[0])
        return copy

    def _widen_constant(self, dq: ir.Node) -> np.ndarray:
        """A constant read through an 8-bit DQ: ``257 q`` at the 16-bit parameters (the same values)."""
        data = constant_array(dq.inputs[0])
        params = self.wide_params(dq.inputs[1], dq.inputs[2])  # type: ignore[arg-type]
        if data is None or params is None or data.dtype != np.uint8:
            return constant_array(dq.inputs[1])  # type: ignore[return-value]
        base = dq.inputs[0].name or "constant"  # type: ignore[union-attr]
        dq.replace_input_with(0, make_initializer(self.graph, self.names, f"{base}_16",
                                                  (data.astype(np.uint32) * FACTOR).astype(np.uint16)))
        dq.replace_input_with(1, params[0])
        dq.replace_input_with(2, params[1])
        self.stats["constants_widened"] += 1
        return constant_array(params[0])  # type: ignore[return-value]

    def _rescale_bias(self, node: ir.Node, x_scale: np.ndarray | None) -> None:
        """int32 bias at ``x_scale * w_scale``: with the input 257x finer, ``257 b`` at ``scale / 257``."""
        slot = BIAS_INPUT.get(node.op_type)
        if slot is None or x_scale is None or len(node.inputs) <= slot or node.inputs[slot] is None:
            return
        dq = node.inputs[slot].producer()  # type: ignore[union-attr]
        if not _is(dq, "DequantizeLinear") or dq.metadata_props.get(PASS_METADATA_KEY) == WidenActivations.name:
            return
        data, scale = constant_array(dq.inputs[0]), constant_array(dq.inputs[1])
        if data is None or scale is None or data.dtype != np.int32:
            return
        wide = data.astype(np.int64) * FACTOR
        if np.any(np.abs(wide) > np.iinfo(np.int32).max):
            return  # NOTE: left as is; check's int32-bias rule names it
        base = dq.inputs[0].name or "bias"  # type: ignore[union-attr]
        dq.replace_input_with(0, make_initializer(self.graph, self.names, f"{base}_16", wide.astype(np.int32)))
        dq.replace_input_with(1, make_initializer(self.graph, self.names, f"{base}_scale_16",
                                                  (scale / np.float32(FACTOR)).astype(np.float32)))
        dq.metadata_props[PASS_METADATA_KEY] = WidenActivations.name
        self.stats["biases_rescaled"] += 1
