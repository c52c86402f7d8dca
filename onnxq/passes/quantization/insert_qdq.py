"""insert-qdq: QuantizeLinear -> DequantizeLinear pairs on activations where the target fuses them.

Needs a :class:`~onnxq.targets.Target` and calibrated :class:`~onnxq.calibration.ranges.Ranges`.
Placement comes from :mod:`onnxq.passes.quantization._plan` (integer kernels, Relu/Clip absorbed
into the following Q, one scale through data movement, nothing around float ops). Each quantized
tensor gets one Q and one DQ per consuming node (what onnxruntime's EnsureUniqueDQForNodeUnit
would make of a shared DQ anyway). Constant operands of integer ops (an Add's bias, a Mul's
scale) become uint8 initializers with a DQ. Weights are left to ``quantize-weights``. If/Loop/Scan
bodies stay float; a main-graph tensor they read is read through a DQ so the producer still fuses.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.calibration.ranges import Ranges
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity
from onnxq.framework.context import PassContext
from onnxq.passes.quantization._common import (
    PASS_METADATA_KEY,
    NameScope,
    QParams,
    Selection,
    activation_qparams,
    constant_array,
    fit_inside,
    make_initializer,
    make_node,
    quantize_array,
)
from onnxq.passes.quantization._plan import Plan, plan_with_ranges
from onnxq.targets.base import Target


class InsertQDQ(Pass):
    """Static QDQ placement from calibrated ranges and the target's rules."""

    name: ClassVar[str] = "insert-qdq"
    summary: ClassVar[str] = "Insert Q/DQ on activations where the target runs integer kernels (static)"
    needs: ClassVar[tuple[type, ...]] = (Target, Ranges)

    @dataclasses.dataclass(frozen=True)
    class Options:
        include: tuple[str, ...] = dataclasses.field(
            default=(),
            metadata={"help": "only nodes matching these names, op types or regexes (':'-separated)"},
        )
        exclude: tuple[str, ...] = dataclasses.field(
            default=(), metadata={"help": "leave nodes matching these names, op types or regexes in float"}
        )

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = ctx.resource(Target)
        ranges = ctx.resource(Ranges)
        return insert_qdq(
            model, target, ranges, Selection(self.options.include, self.options.exclude), self.name
        )


def insert_qdq(
    model: ir.Model, target: Target, ranges: Ranges, selection: Selection, pass_name: str
) -> PassResult:
    """Inserts the QDQ of :func:`make_plan` into ``model`` (see the module docstring)."""
    diagnostics: list[Diagnostic] = []
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < target.min_qdq_opset:
        return PassResult(
            False,
            {},
            (
                Diagnostic(
                    f"opset {opset} has no QuantizeLinear; convert to >= {target.min_qdq_opset} first",
                    Severity.WARNING,
                ),
            ),
        )
    if any(n.metadata_props.get(PASS_METADATA_KEY) == pass_name for n in model.graph):
        return PassResult(False, {}, (Diagnostic("model already has QDQ from insert-qdq; left unchanged"),))

    plan, missing = plan_with_ranges(model, target, selection, set(ranges))
    for name in missing:
        diagnostics.append(
            Diagnostic(f"no calibrated range for tensor '{name}'; its consumers stay float", Severity.WARNING)
        )
    for node, reason in sorted(plan.left_float.items(), key=lambda kv: kv[0].name or ""):
        diagnostics.append(Diagnostic(f"{node.op_type} left in float: {reason}", node=node.name))
    if not plan.tensors and not plan.constants:
        return PassResult(False, {}, tuple(diagnostics))

    names = NameScope(model)
    stats = _emit(model, plan, target, ranges, names, pass_name, diagnostics)
    stats["nodes_quantized"] = len(plan.quantized)
    stats["nodes_left_float"] = len(plan.left_float)
    return PassResult(True, {k: v for k, v in stats.items() if v}, tuple(diagnostics))


def _params(plan: Plan, value: ir.Value, target: Target, ranges: Ranges) -> QParams:
    root = plan.root[value]
    found = ranges[root.name or ""]
    lo, hi = found.min, found.max
    bounds = plan.clip_bounds.get(root)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        hi = max(hi, lo)
    params = activation_qparams(
        lo,
        hi,
        dtype=target.activation_dtype,
        qrange=target.activation_qrange(),
        symmetric=target.activation_symmetric,
    )
    if bounds is not None:
        fitted = fit_inside(params, target.activation_qrange(), *bounds)
        if fitted is not None:
            params = fitted
    return params


def _owners(graph: ir.Graph) -> dict[ir.Node, ir.Node]:
    """Every node of the graph and of its subgraphs -> the main-graph node that is or holds it."""
    owners: dict[ir.Node, ir.Node] = {}
    for node in graph:
        owners[node] = node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                subgraphs = [attr.as_graph()]
            elif attr.type == ir.AttributeType.GRAPHS:
                subgraphs = list(attr.as_graphs())
            else:
                continue
            for sub in subgraphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    owners[inner] = node
    return owners


def _emit(
    model: ir.Model,
    plan: Plan,
    target: Target,
    ranges: Ranges,
    names: NameScope,
    pass_name: str,
    diagnostics: list[Diagnostic],
) -> dict[str, int]:
    graph = model.graph
    order = {node: i for i, node in enumerate(graph)}
    owners = _owners(graph)
    fused_producers = set(plan.quantized) | _absorbers(plan)
    scale_inits: dict[ir.Value, tuple[ir.Value, ir.Value]] = {}
    after: dict[ir.Node | None, list[ir.Node]] = defaultdict(list)
    before: dict[ir.Node, list[ir.Node]] = defaultdict(list)
    stats = {"q_inserted": 0, "dq_inserted": 0, "constants_quantized": 0}
    qdtype = target.activation_dtype

    def scale_zp(value: ir.Value) -> tuple[ir.Value, ir.Value]:
        root = plan.root[value]
        if root not in scale_inits:
            params = _params(plan, root, target, ranges)
            base = root.name or "tensor"
            scale = make_initializer(graph, names, f"{base}_scale", np.array(params.scale, np.float32))
            zp = make_initializer(
                graph, names, f"{base}_zero_point", np.array(params.zero_point, qdtype.numpy())
            )
            scale_inits[root] = (scale, zp)
        return scale_inits[root]

    for value in plan.tensors:
        scale, zp = scale_zp(value)
        base = value.name or "tensor"
        q = make_node(
            pass_name,
            names,
            "QuantizeLinear",
            [value, scale, zp],
            base=f"{base}_quantized",
            output_dtype=qdtype,
            shape=value.shape,
        )
        producer = value.producer()
        anchor = producer if producer is not None and producer.graph is graph else None
        after[anchor].append(q)
        stats["q_inserted"] += 1
        # One DQ per consuming main-graph node (a node inside a subgraph counts as its If/Loop).
        consumers: dict[ir.Node, list[tuple[ir.Node, int]]] = defaultdict(list)
        for use in value.uses():
            if use.node is q:
                continue
            owner = owners.get(use.node)
            if owner is None:
                continue
            consumers[owner].append((use.node, use.idx))
        if not target.data_movement_ops and (producer is None or producer not in fused_producers):
            # NOTE: a target that runs no data movement on int8 (TensorRT) gains nothing from a float
            # consumer reading the DQ, and a Concat fed by DQ'd and float inputs breaks its rule that
            # joined branches share one scale: such consumers keep the float tensor.
            for owner in [o for o in consumers if not target.is_integer_op(o)]:
                del consumers[owner]
        for k, owner in enumerate(sorted(consumers, key=order.__getitem__)):
            dq = make_node(
                pass_name,
                names,
                "DequantizeLinear",
                [q.outputs[0], scale, zp],
                base=f"{base}_dequantized" if k == 0 else f"{base}_dequantized_{k}",
                output_dtype=ir.DataType.FLOAT,
                shape=value.shape,
            )
            after[anchor].append(dq)
            stats["dq_inserted"] += 1
            for node, idx in consumers[owner]:
                node.replace_input_with(idx, dq.outputs[0])
        if value.is_graph_output() and producer is not None and producer in fused_producers:
            # NOTE: the producer fuses only when Q is its sole consumer, so the graph output is
            # re-read through a DQ that takes over the output's name.
            dq = make_node(
                pass_name,
                names,
                "DequantizeLinear",
                [q.outputs[0], scale, zp],
                base=f"{base}_output",
                output_dtype=ir.DataType.FLOAT,
                shape=value.shape,
            )
            after[anchor].append(dq)
            stats["dq_inserted"] += 1
            original = value.name
            value.name = names.fresh(f"{original}_float")
            dq.outputs[0].name = original
            for i, out in enumerate(graph.outputs):
                if out is value:
                    graph.outputs[i] = dq.outputs[0]

    const_cache: dict[ir.Value, ir.Value] = {}
    for node, slot in plan.constants:
        value = node.inputs[slot]
        assert value is not None
        if value not in const_cache:
            array = constant_array(value)
            assert array is not None
            params = activation_qparams(
                float(array.min(initial=0.0)),
                float(array.max(initial=0.0)),
                dtype=qdtype,
                qrange=target.activation_qrange(),
                symmetric=target.activation_symmetric,
            )
            base = value.name or "constant"
            qvalue = make_initializer(
                graph,
                names,
                f"{base}_quantized",
                quantize_array(array.astype(np.float32), params, target.activation_qrange()),
            )
            scale = make_initializer(graph, names, f"{base}_scale", np.array(params.scale, np.float32))
            zp = make_initializer(
                graph, names, f"{base}_zero_point", np.array(params.zero_point, qdtype.numpy())
            )
            dq = make_node(
                pass_name,
                names,
                "DequantizeLinear",
                [qvalue, scale, zp],
                base=f"{base}_dequantized",
                output_dtype=ir.DataType.FLOAT,
                shape=ir.Shape(array.shape),
            )
            before[node].append(dq)
            const_cache[value] = dq.outputs[0]
            stats["constants_quantized"] += 1
        node.replace_input_with(slot, const_cache[value])

    for anchor, new_nodes in after.items():
        if anchor is None:
            first = next(iter(graph), None)
            if first is None:
                graph.extend(new_nodes)
            else:
                graph.insert_before(first, new_nodes)
        else:
            graph.insert_after(anchor, new_nodes)
    for node, new_nodes in before.items():
        graph.insert_before(node, new_nodes)
    return stats


def _absorbers(plan: Plan) -> set[ir.Node]:
    """Relu/Clip nodes whose output carries a quantized node's Q."""
    result = set()
    for node in plan.quantized:
        out = node.outputs[0]
        uses = out.uses()
        if len(uses) == 1 and uses[0].node.outputs and uses[0].node.outputs[0] in plan.root:
            result.add(uses[0].node)
    return result
