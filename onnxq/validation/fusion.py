"""Which QDQ groups really became integer kernels in onnxruntime CPU, and why the others did not.

The model runs through an onnxruntime CPU session at ``ORT_ENABLE_ALL`` with
``optimized_model_filepath`` set; the optimized graph is read back and every QDQ group of the
input (a node fed by a DequantizeLinear or feeding a QuantizeLinear) is looked up in it.

Mapping optimized nodes back (measured with onnxruntime 1.32): a fused kernel takes the name of
the node it replaces (``Conv_3`` -> ``QLinearConv 'Conv_3'``), the NHWC layout transformer adds
``_token_<n>`` suffixes, duplicated DQs get ``/duplicated``, and a float op that swallows another
(Conv+Add -> FusedConv) keeps the first node's name and the last node's output name. Nodes without
a unique name are named ``<op>_<index>`` in a copy before the session sees them.

Why a group stayed float is derived from the input graph with the selector conditions measured in
/work/shared/ORT_CPU_QDQ.md (ops with no integer kernel, an unquantized input, Relu after a Q whose
zero point is not qmin, per-channel on the wrong axis, 16-bit types, data-movement ops whose Q/DQ
parameters differ, ...). onnxruntime exposes no API that says why a selector declined, so these
rules are hand-written; a group that matches none is reported with the optimized op it became.

``remove_unfused_qdq`` then drops the Q/DQ pairs that only add time around groups that stayed float.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OnnxqError, UserError, first_line
from onnxq.ir.constants import constant_array
from onnxq.ir.io import load_model, save_model

#: Integer kernels onnxruntime CPU runs (QDQ fusions, dynamic quantization, weight-only).
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean", "QLinearConvTranspose", "QAttention",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "ConvInteger",
    "MatMulInteger", "MatMulNBits", "NhwcMaxPool", "QEmbedLayerNormalization",
})
#: Integer kernels that are slower than float on x86 (measured: 5-30x).
SLOW_KERNELS = frozenset({"ConvInteger"})
Q_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear"})
DQ_OPS = frozenset({"DequantizeLinear"})
#: Ops with a QDQ selector that turns DQ -> op -> Q into an integer kernel.
FUSABLE = frozenset({"Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool",
                     "Sigmoid", "LeakyRelu", "Softmax", "Where"})
#: Fusable ops that fuse without an output Q (MatMul -> MatMulIntegerToFloat, Gemm -> float QGemm).
FLOAT_OUTPUT_OK = frozenset({"MatMul", "Gemm"})
#: Ops whose Q/DQ onnxruntime drops so they run on int8 (same scale and zero point in and out).
INT8_MOVEMENT = frozenset({"MaxPool", "Transpose", "Reshape", "Gather", "Squeeze", "Unsqueeze", "Slice",
                           "Flatten", "Split", "Resize", "ArgMax", "DepthToSpace", "SpaceToDepth"})
#: Ops removed when the following Q's range makes them redundant.
ABSORBED = frozenset({"Relu", "Clip"})
#: Which inputs must come from a DequantizeLinear for the selector to match.
_DATA_INPUTS: dict[str, tuple[int, ...]] = {"Conv": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1), "Where": (1, 2)}
_ALL_INPUTS = frozenset({"Add", "Mul", "Concat"})
_TOKEN = re.compile(r"(_token_\d+|/duplicated|_nchwc)+$")


class FusionCheckError(OnnxqError):
    """onnxruntime refused to load or optimize the model."""


@dataclasses.dataclass(frozen=True)
class Group:
    """One QDQ group of the input model and what onnxruntime made of it.

    Attributes:
        node: The group's node name in the input model (``<op>_<index>`` if it had none).
        op_type: The node's op type in the input model.
        fused: Whether it runs as an integer kernel (or on int8 / absorbed into a Q).
        kernel: What it became: ``QLinearConv``, ``MaxPool (int8)``, ``absorbed``, ``FusedConv``...
        reason: Why it stayed float (``None`` when fused).
    """

    node: str
    op_type: str
    fused: bool
    kernel: str
    reason: str | None = None
    #: Stayed float and has a Q -> DQ pair no fused neighbour needs (``remove_unfused_qdq`` drops it);
    #: when False, its Q/DQ belong to fused neighbours and cost nothing extra.
    wasted: bool = False

    def __str__(self) -> str:
        if self.fused:
            return f"{self.node}: fused ({self.kernel})"
        cost = "; its Q/DQ only add time" if self.wasted else "; its Q/DQ serve fused neighbours"
        return f"{self.node}: stayed float ({self.kernel}): {self.reason}{cost}"


@dataclasses.dataclass
class FusionReport:
    """What onnxruntime CPU made of a QDQ model (see :func:`fusion_report`)."""

    #: Integer kernels in the optimized graph, by op type.
    kernels: dict[str, int]
    #: QuantizeLinear / DequantizeLinear left in the optimized graph.
    quantize_linear: int
    dequantize_linear: int
    #: Every QDQ group of the input model's main graph, in graph order.
    groups: list[Group]
    #: Op histogram of the optimized graph (domain-qualified for non-ONNX ops).
    optimized_ops: dict[str, int]
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: What the report does not cover (Q/DQ inside If/Loop/Scan bodies).
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def fused(self) -> list[Group]:
        return [g for g in self.groups if g.fused]

    @property
    def unfused(self) -> list[Group]:
        return [g for g in self.groups if not g.fused]

    @property
    def wasted(self) -> list[Group]:
        """Float groups with Q/DQ that only add time."""
        return [g for g in self.groups if g.wasted]

    def to_json(self) -> dict[str, Any]:
        return {
            "kernels": dict(self.kernels),
            "integer_kernels": sum(self.kernels.values()),
            "quantize_linear": self.quantize_linear,
            "dequantize_linear": self.dequantize_linear,
            "groups": len(self.groups),
            "fused_groups": len(self.fused),
            "wasted_groups": len(self.wasted),
            "unfused": [dataclasses.asdict(g) for g in self.unfused],
            "optimized_ops": dict(self.optimized_ops),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def lines(self, *, verbose: bool = False) -> list[str]:
        """The summary, then the groups that stayed float: grouped by op type with counts and the first
        reason (every group with ``verbose``)."""
        kernels = ", ".join(f"{k} {v}" for k, v in self.kernels.items()) or "none"
        out = [
            f"fusion: {len(self.fused)}/{len(self.groups)} QDQ groups fused ({len(self.wasted)} float with "
            f"Q/DQ that only add time); integer kernels: {kernels}; "
            f"left: {self.quantize_linear} QuantizeLinear, {self.dequantize_linear} DequantizeLinear"
        ]
        if verbose:
            out.extend(f"  {g}" for g in self.unfused)
        else:
            by_op: dict[str, list[Group]] = {}
            for g in self.unfused:
                by_op.setdefault(g.op_type, []).append(g)
            for op, groups in sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                wasted = sum(g.wasted for g in groups)
                names = ", ".join(g.node for g in groups[:3]) + (", ..." if len(groups) > 3 else "")
                out.append(f"  stayed float: {op} x{len(groups)}" + (f" ({wasted} with Q/DQ that only add time)"
                           if wasted else "") + f": {names}; first reason: {groups[0].reason}")
        out.extend(f"  warning: {w}" for w in self.warnings)
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def node_names(graph: ir.Graph) -> list[str]:
    """A unique name for each node of ``graph``, in order: its own, or ``<op>_<index>``.

    Deterministic for a given graph, so a report made on one copy names the same nodes in another.
    """
    taken = {n.name for n in graph if n.name}
    seen: set[str] = set()
    names = []
    for i, node in enumerate(graph):
        name = node.name
        if not name or name in seen:
            name = f"{node.op_type}_{i}"
            while name in taken or name in seen:
                name += "_"
        seen.add(name)
        names.append(name)
    return names


def optimized_model(model: ir.Model | str | os.PathLike[str], folder: str | os.PathLike[str],
                    *, threads: int = 1) -> tuple[onnx.ModelProto, onnx.ModelProto, str]:
    """The (named) input and the graph onnxruntime CPU runs after ``ORT_ENABLE_ALL``.

    Returns:
        The input with every main-graph node uniquely named, onnxruntime's optimized model without
        its weights (left in ``folder``), and the folder the input's external weights (if any) are in.
    """
    folder = Path(folder)
    src, out = folder / "named.onnx", folder / "optimized.onnx"
    direct: Path | None = None
    if isinstance(model, ir.Model):
        # NOTE: a copy shares the weights; save_model streams lazy ones into the temp folder
        # (embedded below the 2 GB protobuf limit, beside the copy above it).
        named = model.clone()
        for node, name in zip(named.graph, node_names(named.graph), strict=True):
            node.name = name
        save_model(named, src)
        proto = onnx.load(os.fspath(src), load_external_data=False)
    else:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            proto = onnx.load(os.fspath(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001  # protobuf raises assorted types on bad files
            raise UserError(f"{path}: not a valid ONNX model ({first_line(e)})") from None
        if _all_named(proto):
            # NOTE: every node has its own name already: the session reads the file itself, weights
            # and all, without a copy.
            direct = path
        else:
            named = load_model(path, check=False)
            for node, name in zip(named.graph, node_names(named.graph), strict=True):
                node.name = name
            save_model(named, src)
            proto = onnx.load(os.fspath(src), load_external_data=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = os.fspath(out)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # NOTE: only the optimized graph's nodes are read back; its weights go to a side file unread.
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(os.fspath(direct or src), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  # onnxruntime raises its own exception types
        raise FusionCheckError(f"onnxruntime cannot load the model: {first_line(e)}") from None
    optimized = onnx.load(os.fspath(out), load_external_data=False)
    return proto, optimized, os.fspath(direct.parent if direct is not None else folder)


def _all_named(proto: onnx.ModelProto) -> bool:
    names = [n.name for n in proto.graph.node]
    return all(names) and len(set(names)) == len(names)


def fusion_report(model: ir.Model | str | os.PathLike[str], *, cpu: str | None = None) -> FusionReport:
    """Runs the model through onnxruntime CPU's optimizer and reports which QDQ groups fused.

    Args:
        model: A QDQ model, in memory or as a file.
        cpu: CPU kind for the saturation warning (``vnni``, ``avx2``, ``arm64``; default: $ONNXQ_CPU or this
            machine's, by :func:`onnxq.targets.ort_cpu.cpu_kind`).

    Raises:
        FusionCheckError: onnxruntime refused the model.
    """
    with tempfile.TemporaryDirectory(prefix="onnxq-fusion-") as tmp:
        named, optimized, base = optimized_model(model, tmp)
        graph = ir.serde.deserialize_graph(named.graph)
        # NOTE: weights left in external data (the input's, or the temp copy's above 2 GB) are read
        # lazily from where they are.
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value.base_dir = base
        return _report(graph, optimized.graph, cpu=cpu)


def unfused_groups(model_or_report: ir.Model | str | os.PathLike[str] | FusionReport) -> list[Group]:
    """The QDQ groups that stayed float on onnxruntime CPU, each with its reason."""
    report = model_or_report if isinstance(model_or_report, FusionReport) else fusion_report(model_or_report)
    return report.unfused


# --- analysis ---------------------------------------------------------------------------
def _key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _report(graph: ir.Graph, opt: onnx.GraphProto, *, cpu: str | None) -> FusionReport:
    by_name: dict[str, list[onnx.NodeProto]] = {}
    by_output: dict[str, onnx.NodeProto] = {}
    for node in opt.node:
        by_name.setdefault(_TOKEN.sub("", node.name), []).append(node)
        for out in node.output:
            by_output[out] = node
    int_values = _integer_values(opt)
    histogram = Counter(_key(n) for n in opt.node)
    kernels = Counter(n.op_type for n in opt.node if n.op_type in INTEGER_KERNELS)
    groups: list[Group] = []
    names = dict(zip(graph, node_names(graph), strict=True))
    for node, name in names.items():
        if not _is_group(node):
            continue
        fused, kernel = _what_it_became(node, name, by_name, by_output, int_values)
        reason = None if fused else _why_float(node)
        groups.append(Group(name, node.op_type, fused, kernel, reason))
    # NOTE: a float group is wasteful when a Q -> DQ pair touching it could go.
    touched: set[str] = set()
    for q, dq in removable_pairs(graph, names, {g.node for g in groups if g.fused}):
        producer = q.inputs[0].producer() if q.inputs[0] is not None else None
        if producer is not None and producer in names:
            touched.add(names[producer])
        # NOTE: a consumer inside an If/Loop body reads the DQ from the outer scope; it is not
        # one of the main graph's groups.
        touched.update(names[u.node] for u in dq.outputs[0].uses() if u.node in names)
    groups = [dataclasses.replace(g, wasted=True) if not g.fused and g.node in touched else g for g in groups]
    warnings = []
    for slow in sorted(SLOW_KERNELS & set(kernels)):
        warnings.append(f"{slow} present ({kernels[slow]} nodes): slow on x86, slower than float; "
                        "quantize Conv statically (QDQ) instead")
    warnings.extend(_saturation_warnings(graph, groups, cpu))
    nested = sum(1 for n in ir.traversal.RecursiveGraphIterator(graph) if n.graph is not graph and (is_q(n) or is_dq(n)))
    notes = [f"{nested} Q/DQ node(s) inside If/Loop/Scan bodies are not analysed (main graph only)"] if nested else []
    return FusionReport(
        notes=notes,
        kernels=dict(sorted(kernels.items())),
        quantize_linear=histogram.get("QuantizeLinear", 0),
        dequantize_linear=histogram.get("DequantizeLinear", 0),
        groups=groups,
        optimized_ops=dict(sorted(histogram.items())),
        warnings=warnings,
    )


def is_q(node: ir.Node | None) -> bool:
    return node is not None and node.op_type in Q_OPS and node.domain in ("", "ai.onnx", "com.microsoft")


def is_dq(node: ir.Node | None) -> bool:
    return node is not None and node.op_type in DQ_OPS and node.domain in ("", "ai.onnx", "com.microsoft")


def _is_group(node: ir.Node) -> bool:
    # NOTE: Shape/Size read only the shape of a DQ's output: not a group, nothing to fuse.
    if is_q(node) or is_dq(node) or node.op_type in ("Constant", "Identity", "Shape", "Size"):
        return False
    from_dq = any(v is not None and is_dq(v.producer()) for v in node.inputs)
    to_q = any(is_q(use.node) for out in node.outputs for use in out.uses())
    if node.op_type in ABSORBED and not from_dq:
        # NOTE: a Relu/Clip after a compute op belongs to that op's group (fused with it or not).
        producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        return producer is None
    return from_dq or to_q


def _integer_values(opt: onnx.GraphProto) -> set[str]:
    """Names of tensors holding quantized integers in the optimized graph (it is topologically sorted)."""
    ints = {v.name for v in opt.input if v.type.tensor_type.elem_type in _INT8_TYPES}
    ints |= {t.name for t in opt.initializer if t.data_type in _INT8_TYPES}
    for node in opt.node:
        if node.op_type in Q_OPS or node.op_type.startswith("QLinear") or node.op_type == "NhwcMaxPool":
            ints.add(node.output[0])
        elif node.op_type == "QGemm" and len(node.input) > 7 and node.input[7]:
            ints.add(node.output[0])
        elif node.op_type in INT8_MOVEMENT and node.input and node.input[0] in ints:
            ints.update(node.output)
    return ints


_INT8_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})


def _what_it_became(node: ir.Node, name: str, by_name: dict[str, list[onnx.NodeProto]],
                    by_output: dict[str, onnx.NodeProto], int_values: set[str]) -> tuple[bool, str]:
    matches = by_name.get(name, [])
    for m in matches:
        if m.op_type in INTEGER_KERNELS:
            return True, m.op_type
    if node.op_type in INT8_MOVEMENT:
        if not matches:
            return True, "removed"
        if any(m.input and m.input[0] in int_values for m in matches):
            return True, f"{matches[0].op_type} (int8)"
        return False, matches[0].op_type
    if node.op_type in ABSORBED and not matches:
        return True, "absorbed into QuantizeLinear"
    if matches:
        return False, matches[0].op_type
    # NOTE: a float fusion (Conv+Add -> FusedConv) keeps the last node's output name.
    for out in node.outputs:
        swallowed = by_output.get(out.name or "")
        if swallowed is not None:
            return swallowed.op_type in INTEGER_KERNELS, swallowed.op_type
    return True, "removed"


@dataclasses.dataclass(frozen=True)
class _QParams:
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    dtype: ir.DataType | None
    axis: int | None

    def same(self, other: _QParams) -> bool:
        if self.scale is None or other.scale is None or self.dtype != other.dtype:
            return False
        zp_a = self.zero_point if self.zero_point is not None else np.zeros(1)
        zp_b = other.zero_point if other.zero_point is not None else np.zeros(1)
        return bool(np.array_equal(self.scale, other.scale) and np.array_equal(zp_a.astype(np.int64),
                                                                              zp_b.astype(np.int64)))


def qparams(node: ir.Node) -> _QParams:
    """Scale, zero point, quantized type and axis of a QuantizeLinear/DequantizeLinear."""
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = constant_array(zp_value)
    quantized = node.outputs[0] if is_q(node) else node.inputs[0]
    # NOTE: the zero point's type is the quantized type; without one, ONNX defaults to uint8.
    dtype = zp_value.dtype if zp_value is not None and zp_value.dtype is not None else (
        quantized.dtype if quantized is not None and quantized.dtype is not None else ir.DataType.UINT8)
    axis_attr = node.attributes.get("axis")
    axis = axis_attr.as_int() if axis_attr is not None and scale is not None and scale.size > 1 else None
    if axis is None and scale is not None and scale.size > 1:
        axis = 1
    return _QParams(scale, zp, dtype, axis)


def _qmin(dtype: ir.DataType | None) -> int:
    return int(np.iinfo(dtype.numpy()).min) if dtype is not None and dtype.is_integer() else 0


def _why_float(node: ir.Node) -> str:
    """The selector condition the group breaks, from the input graph."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{op} has no QDQ selector on ORT CPU"
    if op not in FUSABLE | INT8_MOVEMENT | ABSORBED:
        return f"ORT CPU has no integer kernel for {op}" + _HINTS.get(op, "")
    if op == "Resize":
        mode = node.attributes.get("mode")
        if mode is not None and mode.as_string() != "nearest":
            return f"{mode.as_string()} Resize has no integer kernel (only nearest runs on int8)"
    if op == "Gemm":
        alpha = node.attributes.get("alpha")
        if alpha is not None and alpha.as_float() != 1.0:
            return f"Gemm alpha={alpha.as_float():g}; ORT fuses only alpha 1"
    inputs = _DATA_INPUTS.get(op, tuple(range(len(node.inputs))) if op in _ALL_INPUTS else (0,))
    dqs: list[ir.Node] = []
    for i in inputs:
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            continue
        producer = value.producer()
        if not is_dq(producer):
            which = {0: "activation input", 1: "weight input"}.get(i, f"input {i}") if op in _DATA_INPUTS else f"input {i}"
            return f"{which} '{value.name}' is not quantized (no DequantizeLinear before it)"
        assert producer is not None
        dqs.append(producer)
    params = [qparams(dq) for dq in dqs]
    for p, dq in zip(params, dqs, strict=True):
        if p.dtype in (ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT4, ir.DataType.UINT4):
            return f"{p.dtype.name.lower()} DequantizeLinear '{dq.name}': ORT CPU fuses only 8-bit types"
    if dqs and params[0].dtype == ir.DataType.INT8 and dqs[0].inputs[0] is not None:
        fan_out = len(dqs[0].inputs[0].uses())
        if fan_out > 1:
            return (f"int8 activation '{dqs[0].inputs[0].name}' feeds {fan_out} nodes; on x86 ORT rewrites "
                    "int8 Q/DQ to uint8 only without fan-out: use uint8 activations")
    if op in ("MatMul", "Gemm") and len(params) > 1 and params[1].axis is not None:
        weight = node.inputs[1]
        rank = len(weight.shape) if weight is not None and weight.shape is not None else 2
        axis = params[1].axis % max(rank, 1)
        if op == "MatMul":
            want = rank - 1
        else:
            trans_b = node.attributes.get("transB")
            want = 0 if trans_b is not None and trans_b.as_int() else 1
        if axis != want:
            return f"per-channel weight on axis {axis}; ORT fuses {op} only per-channel on N (axis {want})"
    if op in FUSABLE | INT8_MOVEMENT:
        reason = _why_output(node, params[0] if params else None)
        if reason:
            return reason
    return "no ORT CPU selector matched"


_HINTS = {
    "BatchNormalization": " (fold it into the preceding Conv before quantizing)",
    "ReduceMean": " (a mean over H, W is GlobalAveragePool, which has one)",
}


def _why_output(node: ir.Node, in_params: _QParams | None) -> str | None:
    op = node.op_type
    out = node.outputs[0]
    uses = list(out.uses())
    if op in INT8_MOVEMENT:
        q_nodes = [u.node for u in uses if is_q(u.node)]
        if in_params is not None and q_nodes and not qparams(q_nodes[0]).same(in_params):
            return "input DequantizeLinear and output QuantizeLinear have different scale/zero point"
        if not q_nodes:
            return "output is not quantized (no QuantizeLinear after it), so it stays float"
        return None
    if len(uses) > 1:
        return f"output '{out.name}' feeds {len(uses)} nodes; the selector needs one QuantizeLinear"
    if not uses:
        return None
    consumer = uses[0].node
    if consumer.op_type in ABSORBED:
        after = [u.node for u in consumer.outputs[0].uses()]
        q = after[0] if len(after) == 1 and is_q(after[0]) else None
        if q is None:
            return f"{consumer.op_type} '{consumer.name}' after it is not followed by a single QuantizeLinear"
        p = qparams(q)
        qmin = _qmin(p.dtype)
        zp = int(p.zero_point.reshape(-1)[0]) if p.zero_point is not None else 0
        if consumer.op_type == "Relu" and zp != qmin:
            return f"output Q has zero point {zp} after Relu (fuses only with zero point {qmin})"
        if consumer.op_type == "Clip":
            return f"Clip '{consumer.name}' range does not cover output Q's range, so it cannot be absorbed"
        return None
    if not is_q(consumer) and op not in FLOAT_OUTPUT_OK:
        return f"output is not quantized ({consumer.op_type} '{consumer.name}' follows, not a QuantizeLinear)"
    return None


def _saturation_warnings(graph: ir.Graph, groups: Sequence[Group], cpu: str | None) -> list[str]:
    """u8 activations x s8 full-range weights saturate on AVX2 without VNNI (ORT_CPU_QDQ.md, surprise 2)."""
    from onnxq.targets.ort_cpu import cpu_kind

    if cpu_kind(cpu) != "avx2":
        return []
    fused = {g.node for g in groups if g.fused and g.op_type in ("Conv", "MatMul", "Gemm")}
    hit = []
    for node, name in zip(graph, node_names(graph), strict=True):
        if name not in fused or len(node.inputs) < 2:
            continue
        a, w = (v.producer() if v is not None else None for v in node.inputs[:2])
        if not (is_dq(a) and is_dq(w)):
            continue
        assert a is not None and w is not None
        if qparams(a).dtype not in (ir.DataType.UINT8, ir.DataType.INT8):
            continue
        weights = constant_array(w.inputs[0])
        if weights is not None and weights.dtype == np.int8 and weights.size and int(np.abs(
                weights.astype(np.int16)).max()) > 64:
            hit.append(name)
    if not hit:
        return []
    more = f" and {len(hit) - 3} more" if len(hit) > 3 else ""
    return [f"u8s8 with full-range int8 weights on AVX2 without VNNI can saturate (up to ~14 LSB error): "
            f"{', '.join(hit[:3])}{more}; use 7-bit weights (reduce_range) or u8u8"]


# --- removal ----------------------------------------------------------------------------
def remove_unfused_qdq(model: ir.Model, report: FusionReport) -> int:
    """Removes the Q/DQ pairs that only add time around groups that stayed float.

    A Q -> DQ pair is removed (its DQ's consumers read the Q's float input) when the Q's input is not
    produced by a fused group and every consumer of the DQ is a node that stays float. A DQ -> Q pair
    with equal parameters is an identity and is removed too. Fused groups keep every Q/DQ they use,
    so the graph stays valid and they stay fused. Only the main graph is changed.

    Args:
        model: The model the report was made on (same node order); changed in place.
        report: Its :func:`fusion_report`.

    Returns:
        The number of QuantizeLinear/DequantizeLinear nodes removed.
    """
    graph = model.graph
    names = dict(zip(graph, node_names(graph), strict=True))
    fused = {g.node for g in report.groups if g.fused}
    removed = 0
    for q, dq in removable_pairs(graph, names, fused):
        source, out = q.inputs[0], dq.outputs[0]
        assert source is not None
        if out.is_graph_output():
            _take_output_name(graph, out, source)
        out.replace_all_uses_with(source)
        graph.remove(dq, safe=True)
        removed += 1
        if not q.outputs[0].uses() and not q.outputs[0].is_graph_output():
            graph.remove(q, safe=True)
            removed += 1
    for dq in list(graph):
        if not is_dq(dq) or dq.graph is not graph or dq.inputs[0] is None:
            continue
        for use in list(dq.outputs[0].uses()):
            q = use.node
            if not is_q(q) or q.op_type != "QuantizeLinear" or not qparams(q).same(qparams(dq)):
                continue
            if q.outputs[0].is_graph_output():
                continue
            q.outputs[0].replace_all_uses_with(dq.inputs[0])
            graph.remove(q, safe=True)
            removed += 1
        if not dq.outputs[0].uses() and not dq.outputs[0].is_graph_output():
            graph.remove(dq, safe=True)
            removed += 1
    return removed


def removable_pairs(graph: ir.Graph, names: dict[ir.Node, str], fused: set[str]) -> list[tuple[ir.Node, ir.Node]]:
    """Activation Q -> DQ pairs that only add time: no fused group produces or reads them.

    The Q's input must not come from a fused group (its Q is part of that kernel) and every consumer
    of the DQ must stay float; a DQ that is a graph output is kept when the Q reads a graph input.
    """
    pairs = []

    def stays_float(node: ir.Node) -> bool:
        return not is_q(node) and not is_dq(node) and names.get(node) not in fused

    for q in graph:
        if q.op_type != "QuantizeLinear" or not is_q(q) or q.inputs[0] is None:
            continue
        source = q.inputs[0]
        producer = source.producer()
        # NOTE: a Relu/Clip absorbed into a fused group's output Q belongs to that group.
        while producer is not None and producer.op_type in ABSORBED and not _is_group(producer) \
                and producer.inputs and producer.inputs[0] is not None:
            producer = producer.inputs[0].producer()
        if producer is not None and (names.get(producer) in fused or is_dq(producer) or is_q(producer)):
            continue
        for use in q.outputs[0].uses():
            dq = use.node
            if not is_dq(dq) or dq.graph is not graph:
                continue
            out = dq.outputs[0]
            if not all(stays_float(u.node) for u in out.uses()):
                continue
            if out.is_graph_output() and (source.is_graph_input() or source.is_graph_output()
                                          or source.is_initializer()):
                continue
            pairs.append((q, dq))
    return pairs


def _take_output_name(graph: ir.Graph, output: ir.Value, source: ir.Value) -> None:
    """Makes ``source`` the graph output in place of ``output``, under the output's name."""
    name = output.name
    index = list(graph.outputs).index(output)
    output.name = f"{name}__onnxq_removed"
    graph.outputs[index] = source
    source.name = name
    # NOTE: a graph output must declare its type; the DQ's output had it (same float type).
    if source.type is None:
        source.type = output.type
    if source.shape is None:
        source.shape = output.shape
