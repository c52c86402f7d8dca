"""Float32 -> float16 / bfloat16 on onnx_ir, one tensor at a time, with float32 islands and Casts at their borders.

Shared by ``convert-bfloat16`` (and usable for float16): onnxruntime's converter
(``onnxruntime.transformers.float16``) handles float16 only and works on a whole ``ModelProto``
(every weight in memory twice); this one works on the ``onnx_ir`` model, so weights stay lazy:
a converted initializer is an ``ir.LazyTensor`` that reads, rounds (round to nearest even, through
``ml_dtypes``) and releases its float32 source when the model is written, one tensor at a time.

Which nodes go to the low type is read from the ONNX schemas, not from a hand-kept list: a node
goes low when every type parameter its float32 values bind allows the low type at the node's
opset (``onnx.defs.get_schema``), it has no subgraph, no attribute that fixes an output type
(``RandomNormal``, ``EyeLike``, ``ConstantOfShape``...), and it is not blocked (op type or node
name; the caller's islands). Inputs whose formal type is fixed to float32 (``Resize``'s
``scales``) stay float32. A ``Cast`` to float32 becomes a ``Cast`` to the low type. Everything
else keeps its types; values cross between the two worlds through one ``Cast`` per value and
type, and a float32 initializer read only in the low type is converted instead of cast.
Graph inputs and outputs keep float32 unless ``keep_io_types`` is off.

:func:`emulate` gives the float32 model that computes what the low-precision one computes on
hardware with low-precision storage and float32 arithmetic (each low node's output rounded to the
low type, weights as stored): onnxruntime's CPU provider has almost no bfloat16 kernels
(LayerNormalization, Transpose, Concat in 1.32), so a bfloat16 model is checked through it.

Hand-written: onnx_ir and onnxscript have no precision conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from onnxq.framework.base import Diagnostic, PassResult
from onnxq.ir.constants import read_and_release

LOW_TYPES = {ir.DataType.FLOAT16: ("tensor(float16)", np.float16),
             ir.DataType.BFLOAT16: ("tensor(bfloat16)", ml_dtypes.bfloat16)}
#: Ops whose output type is fixed by an attribute (or random): they stay as they are.
ATTRIBUTE_TYPED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                             "ConstantOfShape", "Multinomial", "Bernoulli"})
#: Quantization nodes keep their float32 scales (a carried QAT grid rounded to bfloat16 would move).
QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
FLOAT = ir.DataType.FLOAT


@dataclasses.dataclass
class Conversion:
    """What :func:`convert` did."""

    low_nodes: int = 0
    float_nodes: list[str] = dataclasses.field(default_factory=list)
    why_float: dict[str, str] = dataclasses.field(default_factory=dict)
    casts: int = 0
    initializers_converted: int = 0


def _formal(formals: list[onnx.defs.OpSchema.FormalParameter], index: int) -> onnx.defs.OpSchema.FormalParameter | None:
    if index < len(formals):
        return formals[index]
    if formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return formals[-1]
    return None


def _low_slots(node: ir.Node, opset: int, low: str) -> tuple[set[int], set[int]] | str:
    """Input and output slots of ``node`` that go to the low type, or why the node stays float32."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op_type} at opset {opset}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: set[str] = set()
    for values, formals in ((node.inputs, schema.inputs), (node.outputs, schema.outputs)):
        for index, value in enumerate(values):
            formal = _formal(formals, index)
            if (value is not None and value.name and value.dtype is None and formal is not None
                    and formal.type_str in allowed):
                return f"the type of '{value.name}' is not known (run infer-shapes first)"
            if value is None or value.dtype != FLOAT:
                continue
            if formal is not None and formal.type_str in allowed:
                if low not in allowed[formal.type_str]:
                    return f"{node.op_type} has no {low[7:-1]} form at opset {opset}"
                bound.add(formal.type_str)
    inputs = {i for i, v in enumerate(node.inputs) if v is not None and v.dtype == FLOAT
              and (f := _formal(schema.inputs, i)) is not None and f.type_str in bound}
    outputs = {i for i, v in enumerate(node.outputs) if v.dtype == FLOAT
               and (f := _formal(schema.outputs, i)) is not None and f.type_str in bound}
    return inputs, outputs


def _lazy(tensor: ir.TensorProtocol, numpy_type: type, dtype: ir.DataType) -> ir.LazyTensor:
    """``tensor`` in the low type, computed when first read (the float32 source is read then, not now)."""
    def make() -> ir.Tensor:
        # NOTE: an external (memory-mapped) source is copied and unmapped at once: its file pages
        # leave this process's RSS while the model is written, tensor after tensor
        return ir.Tensor(np.asarray(read_and_release(tensor), np.float32).astype(numpy_type), dtype=dtype)

    return ir.LazyTensor(make, dtype=dtype, shape=ir.Shape(list(tensor.shape)), name=tensor.name)


def _fresh(graph: ir.Graph, taken: set[str], base: str) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def convert(model: ir.Model, low: ir.DataType, *, keep_io_types: bool = True, block_ops: Collection[str] = (),
            block_nodes: Collection[str] = ()) -> Conversion:
    """Converts the main graph of ``model`` in place (see the module docstring)."""
    low_str, numpy_type = LOW_TYPES[low]
    graph = model.graph
    done = Conversion()
    taken = {v.name for v in (*graph.inputs, *graph.initializers.values()) if v.name}
    taken |= {o.name for n in graph.all_nodes() for o in n.outputs if o.name} | {n.name for n in graph.all_nodes() if n.name}

    # 1. which nodes go low, and which of their slots
    slots: dict[ir.Node, tuple[set[int], set[int]]] = {}
    followers: list[ir.Node] = []
    original = {id(v): v.dtype for v in (*graph.inputs, *graph.initializers.values(),
                                          *(o for n in graph for o in n.outputs))}
    for node in graph:
        opset = model.opset_imports.get(node.domain or "", 1)
        why: str | None = None
        if node.op_type in block_ops or (node.name and node.name in block_nodes):
            why = "blocked"
        elif any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            why = f"{node.op_type} has a subgraph"
        elif node.op_type in ATTRIBUTE_TYPED:
            why = f"{node.op_type} fixes its output type by attribute"
        elif node.op_type in QUANTIZATION_OPS:
            why = "quantization nodes keep float32 scales"
        elif (node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT) or (
                node.op_type == "Constant" and _constant_array(node) is not None):
            followers.append(node)  # NOTE: low only when every reader wants it low (below)
            continue
        elif node.op_type in ("Cast", "Constant"):
            continue
        if why is None:
            found = _low_slots(node, opset, low_str)
            if isinstance(found, str):
                why = found
            elif found[0] or found[1]:
                slots[node] = found
        if why is not None and (any(v is not None and v.dtype == FLOAT for v in node.inputs)
                                or any(o.dtype == FLOAT for o in node.outputs)):
            done.float_nodes.append(node.name or node.op_type)
            done.why_float[node.name or node.op_type] = why
    for node in followers:
        out = node.outputs[0]
        uses = list(out.uses())
        if uses and not (keep_io_types and out.is_graph_output()) and all(
                u.node in slots and u.idx in slots[u.node][0] for u in uses):
            slots[node] = (set(), {0})
    done.low_nodes = len(slots)

    # 2. the values that become low: outputs of low nodes (and graph inputs without keep_io_types)
    was_float = {o for n in graph for o in n.outputs if o.dtype == FLOAT}
    was_float |= {v for v in graph.inputs if v.dtype == FLOAT}
    for node, (_, outs) in slots.items():
        if node.op_type == "Cast":
            node.attributes["to"] = ir.AttrInt64("to", int(low))
        if node.op_type == "Constant":
            array = _constant_array(node)
            for key in ("value", "value_float", "value_floats"):
                node.attributes.pop(key, None)
            node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(array.astype(numpy_type), dtype=low))
        for i in outs:
            _set_dtype(node.outputs[i], low)
    if not keep_io_types:
        for v in graph.inputs:
            if v.dtype == FLOAT:
                _set_dtype(v, low)

    # 3. every use reads the type it needs: converted initializers, else one Cast per value and type
    def needs(node: ir.Node, index: int) -> ir.DataType | None:
        entry = slots.get(node)
        if entry is not None and index in entry[0]:
            return low
        # NOTE: anything else reads what it read before (a float16 op already in the model keeps it)
        value = node.inputs[index]
        return original.get(id(value), value.dtype if value is not None else None)

    casts: dict[tuple[int, ir.DataType], ir.Value] = {}
    initializers = {id(v): v for v in graph.initializers.values()}
    sources = [*graph.inputs, *graph.initializers.values(), *(o for n in list(graph) for o in n.outputs)]
    for value in sources:
        if value.dtype not in (FLOAT, low) or (value.dtype == FLOAT and value not in was_float
                                               and id(value) not in initializers):
            continue
        if value.dtype == low and original.get(id(value)) == low:
            continue  # NOTE: low before the conversion: left as the model had it
        uses = [(u.node, u.idx) for u in value.uses()]
        wrong = [(n, i) for n, i in uses if needs(n, i) in (FLOAT, low) and needs(n, i) != value.dtype]
        if not wrong:
            continue
        if id(value) in initializers and value.const_value is not None and value.dtype == FLOAT and \
                not value.is_graph_output() and not value.is_graph_input():
            if len(wrong) == len(uses):
                value.const_value = _lazy(value.const_value, numpy_type, low)
                _set_dtype(value, low)
                done.initializers_converted += 1
                continue
            copy = ir.Value(name=_fresh(graph, taken, f"{value.name}_{low.name.lower()}"), type=ir.TensorType(low),
                            shape=value.shape, const_value=_lazy(value.const_value, numpy_type, low))
            graph.register_initializer(copy)
            done.initializers_converted += 1
            for n, i in wrong:
                n.replace_input_with(i, copy)
            continue
        for n, i in wrong:
            target = needs(n, i)
            key = (id(value), target)
            if key not in casts:
                cast = ir.node("Cast", [value], attributes={"to": int(target)},
                               name=_fresh(graph, taken, f"{value.name or 'value'}_cast_{target.name.lower()}"))
                cast.outputs[0].name = _fresh(graph, taken, f"{value.name or 'value'}_{target.name.lower()}")
                _set_dtype(cast.outputs[0], target)
                cast.outputs[0].shape = value.shape
                producer = value.producer()
                if producer is not None and producer.graph is graph:
                    graph.insert_after(producer, cast)
                else:
                    graph.insert_before(next(iter(graph)), cast) if len(graph) else graph.append(cast)
                casts[key] = cast.outputs[0]
                done.casts += 1
            n.replace_input_with(i, casts[key])

    # 4. graph outputs keep float32: the low value is renamed, a Cast writes the output's name
    if keep_io_types:
        for index, value in enumerate(list(graph.outputs)):
            if value.dtype != low:
                continue
            name = value.name
            value.name = _fresh(graph, taken, f"{name}_{low.name.lower()}")
            cast = ir.node("Cast", [value], attributes={"to": int(FLOAT)}, name=_fresh(graph, taken, f"{name}_cast"))
            cast.outputs[0].name = name
            _set_dtype(cast.outputs[0], FLOAT)
            cast.outputs[0].shape = value.shape
            graph.append(cast)
            graph.outputs[index] = cast.outputs[0]
            done.casts += 1
    graph.sort()
    return done


def emulate(model: ir.Model, low: ir.DataType) -> ir.Model:
    """A float32 model that computes what ``model`` (in ``low``) computes with float32 arithmetic.

    Each node that writes ``low`` values computes in float32 and its outputs are rounded to
    ``low`` and back (``Cast`` pairs, round to nearest even); ``low`` initializers are widened
    exactly. ``model`` is not modified.
    """
    from onnxq.ir.interop import copy_model

    copy = copy_model(model)
    graph = copy.graph
    taken = {v.name for v in (*graph.inputs, *graph.initializers.values()) if v.name}
    taken |= {o.name for n in graph for o in n.outputs if o.name}
    for value in list(graph.initializers.values()):
        if value.dtype == low and value.const_value is not None:
            value.const_value = ir.Tensor(value.const_value.numpy().astype(np.float32))
            _set_dtype(value, FLOAT)
    for value in graph.inputs:
        if value.dtype == low:
            # NOTE: fed float32, rounded to the low type as a caller's low input would be
            uses = list(value.uses())
            _set_dtype(value, FLOAT)
            pair = _rounding(graph, taken, value, low)
            for use in uses:
                use.node.replace_input_with(use.idx, pair[1].outputs[0])
            graph.insert_before(next(iter(graph)), pair) if len(graph) else graph.extend(pair)
    for node in list(graph):
        if not any(o.dtype == low for o in node.outputs):
            continue
        if node.op_type == "Cast":
            node.attributes["to"] = ir.AttrInt64("to", int(FLOAT))
        if node.op_type == "Constant" and "value" in node.attributes:
            node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(
                node.attributes["value"].as_tensor().numpy().astype(np.float32)))
        for out in node.outputs:
            if out.dtype != low:
                continue
            # NOTE: the node computes in float32; its readers (and a graph output) read it rounded
            uses = list(out.uses())
            _set_dtype(out, FLOAT)
            to_low, back = _rounding(graph, taken, out, low)
            for use in uses:
                use.node.replace_input_with(use.idx, back.outputs[0])
            for index, o in enumerate(list(graph.outputs)):
                if o is out:
                    name = out.name
                    out.name = _fresh(graph, taken, f"{name}_unrounded")
                    back.outputs[0].name = name
                    graph.outputs[index] = back.outputs[0]
            graph.insert_after(node, [to_low, back])
    graph.sort()
    return copy


def _rounding(graph: ir.Graph, taken: set[str], value: ir.Value, low: ir.DataType) -> tuple[ir.Node, ir.Node]:
    """``Cast(Cast(value, low), float32)``: ``value`` rounded to ``low`` as it would be stored."""
    to_low = ir.node("Cast", [value], attributes={"to": int(low)})
    back = ir.node("Cast", [to_low.outputs[0]], attributes={"to": int(FLOAT)})
    to_low.outputs[0].name = _fresh(graph, taken, f"{value.name}_{low.name.lower()}")
    _set_dtype(to_low.outputs[0], low)
    back.outputs[0].name = _fresh(graph, taken, f"{value.name}_rounded")
    _set_dtype(back.outputs[0], FLOAT)
    back.outputs[0].shape = value.shape
    return to_low, back


def _set_dtype(value: ir.Value, dtype: ir.DataType) -> None:
    """Gives ``value`` a type object of its own (a clone's values share theirs with the original's:
    ``value.dtype = ...`` would change both)."""
    value.type = ir.TensorType(dtype)


def _constant_array(node: ir.Node) -> np.ndarray | None:
    """The float32 value of a ``Constant`` node (``value``, ``value_float`` or ``value_floats``), else None."""
    if "value" in node.attributes:
        tensor = node.attributes["value"].as_tensor()
        return np.asarray(tensor.numpy(), np.float32) if tensor.dtype == FLOAT else None
    if "value_float" in node.attributes:
        return np.array(node.attributes["value_float"].as_float(), np.float32)
    if "value_floats" in node.attributes:
        return np.array(list(node.attributes["value_floats"].as_floats()), np.float32)
    return None


def prepare(model: ir.Model, ctx: object, block: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """Infers the value types the schemas decide by (when some are missing) and splits ``block`` into
    node names and op types: what both precision passes do before :func:`convert`."""
    if any(o.dtype is None for n in model.graph for o in n.outputs if o.name):
        from onnxq.passes.cleanup.infer_shapes import InferShapes

        InferShapes().run(model, ctx)  # type: ignore[arg-type]
    names = {n.name for n in model.graph if n.name}
    return {b for b in block if b in names}, {b for b in block if b not in names}


@dataclasses.dataclass(frozen=True)
class LowPrecisionOptions:
    """The options both precision passes take (each adds its own)."""

    keep_io_types: bool = dataclasses.field(default=True, metadata={
        "help": "graph inputs and outputs stay float32 (a Cast at each)"})
    block: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "op types or node names kept in float32 (':'-separated)"})


def already_low(model: ir.Model, dtype: ir.DataType) -> PassResult | None:
    """The unchanged result for a model whose weights are ``dtype`` already, else None."""
    if any(v.dtype == dtype for v in model.graph.initializers.values()):
        return PassResult(False, {}, (Diagnostic(f"the model already holds {dtype.name.lower()} weights; "
                                                 "left unchanged"),))
    return None
