"""``check``: is this graph correct, and does every node run where it will be shipped?

Rules (each finding names the rule and the node or tensor):

- ``onnx-checker`` (onnx.checker, full), ``shape-inference`` (strict, with data propagation),
  ``opset`` (IR version and opset known, compatible, recent enough for QDQ);
- ``initializer-nan-inf``, ``initializer-denormal`` (every non-zero value subnormal),
  ``unused-initializer``, ``unused-input``;
- QDQ sanity: ``qdq-scale`` (constant, finite, > 0), ``qdq-zero-point`` (constant, same type as
  the quantized tensor, within its range, 0 for int32), ``qdq-axis`` (valid, matches the scale's
  length, opset >= 13), ``int32-bias`` (not saturated at the int32 limits, scale = x_scale * w_scale),
  ``qdq-pair`` (a Q and its DQs use the same parameters);
- target rules: ``ort-cpu`` runs the model through onnxruntime's optimizer and names every QDQ group
  that stays float (:mod:`onnxq.validation.fusion`); ``tensorrt`` uses
  ``onnxq.targets.tensorrt_rules`` when it is installed; ``qnn`` measures the offload on the HTP
  simulator; ``nnapi`` / ``coreml`` partition the model with onnxruntime's mobile usability
  checker and name every node left to the CPU, with why (:mod:`onnxq.targets.mobile`); ``xnnpack``
  applies the rules of its EP's source to the graph (:mod:`onnxq.targets.xnnpack`).

The QDQ rules are hand-written: onnx's checker validates types, not quantization parameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper
import onnx.shape_inference
import onnx_ir as ir

from onnxq.errors import OptionError, first_line
from onnxq.ir.constants import constant_array
from onnxq.ir.io import save_model
from onnxq.validation.fusion import (
    FusionCheckError,
    fusion_report,
    is_dq,
    is_q,
    node_names,
    qparams,
)

TARGETS = ("ort-cpu", "tensorrt", "qnn", "qnn-a16", "nnapi", "coreml", "xnnpack")
#: Opset from which per-channel (axis) Q/DQ exist; QDQ itself needs 10.
PER_CHANNEL_OPSET = 13
QDQ_OPSET = 10
_INT32_LIMITS = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule broken by one node or tensor."""

    rule: str
    message: str
    node: str | None = None
    severity: str = "error"  # "error" | "warning" | "info"

    def __str__(self) -> str:
        where = f"{self.node}: " if self.node else ""
        return f"{self.severity}: {where}{self.message} [{self.rule}]"


@dataclasses.dataclass
class CheckReport:
    """All findings of :func:`check`; ``violations`` are the errors and warnings."""

    model: str
    target: str
    findings: list[Finding]
    fusion: Any = None

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in ("error", "warning")]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "ok": self.ok,
            "violations": len(self.violations),
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "fusion": self.fusion.to_json() if self.fusion is not None else None,
        }

    def lines(self) -> list[str]:
        head = "ok" if self.ok else f"{len(self.violations)} violation(s)"
        order = {"error": 0, "warning": 1, "info": 2}
        ranked = sorted(self.findings, key=lambda f: order.get(f.severity, 3))
        return [f"{self.model} on {self.target}: {head}", *(f"  {f}" for f in ranked)]


def check(model: ir.Model | str | os.PathLike[str], *, target: str = "ort-cpu") -> CheckReport:
    """Runs every rule on the model (a file, or in memory).

    Raises:
        OptionError: Unknown target.
    """
    if target not in TARGETS:
        raise OptionError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")
    if isinstance(model, ir.Model):
        where = "model"
        with tempfile.TemporaryDirectory(prefix="onnxq-check-") as tmp:
            path = Path(tmp) / "model.onnx"
            # NOTE: save_model streams lazy weights into the temp folder, beside the copy above 2 GB.
            save_model(model.clone(), path)
            return _check(path, model, where, target)
    path = Path(model)
    from onnxq.ir.io import load_model

    return _check(path, load_model(path), os.fspath(path), target)


def _check(path: Path, model: ir.Model, where: str, target: str) -> CheckReport:
    findings: list[Finding] = []
    findings.extend(_checker(path, model))
    findings.extend(_opset(model))
    findings.extend(_initializers(model))
    findings.extend(_unused(model))
    findings.extend(qdq_findings(model))
    report = CheckReport(where, target, findings)
    if target == "ort-cpu":
        findings.extend(_ort_cpu(model, path, report))
    elif target.startswith("qnn"):
        findings.extend(_qnn(model))
    elif target in ("nnapi", "coreml"):
        findings.extend(_mobile(path, target))
    elif target == "xnnpack":
        findings.extend(_xnnpack(model))
    else:
        findings.extend(_tensorrt(model))
    return report


# --- onnx ---------------------------------------------------------------------------------
def _checker(path: Path, model: ir.Model) -> Iterator[Finding]:
    try:
        onnx.checker.check_model(os.fspath(path), full_check=False)
    except Exception as e:  # noqa: BLE001  # onnx raises ValidationError and assorted others
        yield Finding("onnx-checker", first_line(e))
        return

    try:
        # NOTE: the full check adds strict, type-checked shape inference; from the file, so weights
        # of any size stay where they are.
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as e:  # noqa: BLE001  # InferenceError and friends
        yield Finding("shape-inference", first_line(e))


def _opset(model: ir.Model) -> Iterator[Finding]:
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        yield Finding("opset", "no import of the default ONNX domain")
        return
    if opset > newest:
        yield Finding("opset", f"opset {opset} is newer than this onnx knows ({newest})")
    if model.ir_version > onnx.IR_VERSION:
        yield Finding("opset", f"IR version {model.ir_version} is newer than this onnx knows ({onnx.IR_VERSION})")
    try:
        needed = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    except Exception:  # noqa: BLE001  # unknown opsets are reported above
        needed = None
    if needed is not None and model.ir_version < needed:
        yield Finding("opset", f"IR version {model.ir_version} is too old for opset {opset} (needs >= {needed})")
    has_qdq = any(is_q(n) or is_dq(n) for n in ir.traversal.RecursiveGraphIterator(model.graph))
    if has_qdq and opset < QDQ_OPSET:
        yield Finding("opset", f"opset {opset} < {QDQ_OPSET}: QuantizeLinear/DequantizeLinear need opset {QDQ_OPSET}")


# --- tensors ------------------------------------------------------------------------------
def _initializers(model: ir.Model) -> Iterator[Finding]:
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is None or not tensor.dtype.is_floating_point():
                continue
            try:
                array = tensor.numpy()
            except Exception:  # noqa: BLE001  # unreadable data is the checker's finding
                continue
            if array.dtype.kind not in "fc" or array.size == 0:
                continue
            bad = ~np.isfinite(array)
            if bad.any():
                yield Finding("initializer-nan-inf",
                              f"initializer '{name}' has {int(bad.sum())} NaN/Inf value(s) of {array.size}")
                continue
            nonzero = array[array != 0]
            if nonzero.size and np.all(np.abs(nonzero) < np.finfo(array.dtype).tiny):
                yield Finding("initializer-denormal",
                              f"initializer '{name}': every non-zero value is subnormal (slow, likely flushed to 0)",
                              severity="warning")


def _unused(model: ir.Model) -> Iterator[Finding]:
    graph = model.graph
    outputs = set(graph.outputs)
    for name, value in graph.initializers.items():
        if not value.uses() and value not in outputs:
            yield Finding("unused-initializer", f"initializer '{name}' is not used by any node", severity="warning")
    for value in graph.inputs:
        if value.name not in graph.initializers and not value.uses() and value not in outputs:
            yield Finding("unused-input", f"graph input '{value.name}' is not used by any node", severity="warning")


# --- QDQ ----------------------------------------------------------------------------------
def qdq_findings(model: ir.Model) -> list[Finding]:
    """QDQ sanity findings of the main graph (scales, zero points, axes, biases, pairs)."""
    graph = model.graph
    opset = model.opset_imports.get("", 0)
    names = dict(zip(graph, node_names(graph), strict=True))
    found: list[Finding] = []
    for node in graph:
        if not (is_q(node) or is_dq(node)) or node.op_type == "DynamicQuantizeLinear":
            continue
        found.extend(_qdq_node(node, names[node], opset))
    for node in graph:
        if node.op_type != "QuantizeLinear" or not is_q(node):
            continue
        mine = qparams(node)
        for use in node.outputs[0].uses():
            dq = use.node
            if is_dq(dq) and mine.scale is not None and qparams(dq).scale is not None and not (
                    mine.same(qparams(dq)) and mine.axis == qparams(dq).axis):
                found.append(Finding("qdq-pair", f"QuantizeLinear '{names[node]}' and its DequantizeLinear use "
                                     "different scale/zero point/axis", names[dq]))
    found.extend(_biases(graph, names))
    return found


def _qdq_node(node: ir.Node, name: str, opset: int) -> Iterator[Finding]:
    scale_value = node.inputs[1] if len(node.inputs) > 1 else None
    scale = constant_array(scale_value)
    if scale is None:
        yield Finding("qdq-scale", "scale is not a constant: onnxruntime cannot fuse this group", name, "warning")
    elif not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        bad = scale[~(np.isfinite(scale) & (scale > 0))].ravel()
        yield Finding("qdq-scale", f"scale must be finite and > 0, found {bad[0]!r}"
                      + (f" ({bad.size} values)" if bad.size > 1 else ""), name)
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    zp = constant_array(zp_value)
    quantized = node.outputs[0] if is_q(node) else node.inputs[0]
    data_type = quantized.dtype if quantized is not None else None
    qtype = zp_value.dtype if zp_value is not None and zp_value.dtype is not None else data_type
    if zp_value is not None and zp is None:
        yield Finding("qdq-zero-point", "zero point is not a constant", name, "warning")
    if zp is not None and qtype is not None:
        if is_dq(node) and data_type is not None and zp_value is not None and \
                zp_value.dtype is not None and zp_value.dtype != data_type:
            yield Finding("qdq-zero-point", f"zero point is {zp_value.dtype.name.lower()} but the input is "
                          f"{data_type.name.lower()}", name)
        if qtype.is_integer():
            low, high = _range(qtype)
            values = zp.astype(np.int64)
            if values.size and (values.min() < low or values.max() > high):
                yield Finding("qdq-zero-point", f"zero point {int(values.max() if values.max() > high else values.min())} "
                              f"outside {qtype.name.lower()} range [{low}, {high}]", name)
            if qtype == ir.DataType.INT32 and np.any(values != 0):
                yield Finding("qdq-zero-point", "int32 DequantizeLinear must have zero point 0", name)
        # NOTE: a scalar and a 1-element tensor are both per-tensor; onnxruntime accepts the mix.
        if scale is not None and zp.shape != scale.shape and not (zp.size == scale.size == 1):
            yield Finding("qdq-zero-point", f"zero point shape {list(zp.shape)} differs from scale shape "
                          f"{list(scale.shape)}", name)
    if scale is not None and (scale.size > 1 or scale.ndim > 1):
        yield from _axis(node, name, scale, opset)


def _range(dtype: ir.DataType) -> tuple[int, int]:
    return {ir.DataType.INT4: (-8, 7), ir.DataType.UINT4: (0, 15)}.get(dtype) or (
        int(np.iinfo(dtype.numpy()).min), int(np.iinfo(dtype.numpy()).max))


def _axis(node: ir.Node, name: str, scale: np.ndarray, opset: int) -> Iterator[Finding]:
    if scale.ndim > 1:
        if opset < 21:
            yield Finding("qdq-axis", f"scale has rank {scale.ndim}; blocked quantization needs opset 21", name)
        return
    if opset < PER_CHANNEL_OPSET:
        yield Finding("qdq-axis", f"per-channel scale ({scale.size} values) needs opset >= {PER_CHANNEL_OPSET}, "
                      f"model has {opset} (onnxruntime refuses 'axis' before 13)", name)
        return
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else 1
    data = node.inputs[0]
    shape = data.shape if data is not None else None
    if shape is None:
        return
    rank = len(shape)
    if not -rank <= axis < rank:
        yield Finding("qdq-axis", f"axis {axis} is out of range for a rank-{rank} tensor", name)
        return
    dim = shape[axis % rank]
    if isinstance(dim, int) and dim != scale.size:
        yield Finding("qdq-axis", f"axis {axis} has {dim} channels but the scale has {scale.size} values", name)


def _biases(graph: ir.Graph, names: dict[ir.Node, str]) -> Iterator[Finding]:
    for node in graph:
        if not is_dq(node) or node.inputs[0] is None or node.inputs[0].dtype != ir.DataType.INT32:
            continue
        values = constant_array(node.inputs[0])
        if values is not None and values.size and (values.min() <= _INT32_LIMITS[0] or values.max() >= _INT32_LIMITS[1]):
            yield Finding("int32-bias", "int32 bias saturates at the int32 limit: its scale "
                          "(x_scale * w_scale) is too small; inflate the weight scale or keep the bias float",
                          names[node])
        scale = constant_array(node.inputs[1])
        for use in node.outputs[0].uses():
            consumer = use.node
            if consumer.op_type not in ("Conv", "Gemm", "ConvTranspose") or use.idx != 2:
                continue
            x_dq, w_dq = (v.producer() if v is not None else None for v in consumer.inputs[:2])
            if not (is_dq(x_dq) and is_dq(w_dq)) or scale is None:
                continue
            assert x_dq is not None and w_dq is not None
            xs, ws = constant_array(x_dq.inputs[1]), constant_array(w_dq.inputs[1])
            if xs is None or ws is None:
                continue
            want = (xs.astype(np.float64) * ws.astype(np.float64)).ravel()
            got = scale.astype(np.float64).ravel()
            if want.size in (1, got.size) and got.size in (1, want.size) and not np.allclose(got, want, rtol=1e-3):
                yield Finding("int32-bias", f"bias scale differs from x_scale * w_scale of "
                              f"'{names.get(consumer, consumer.name)}'; onnxruntime fuses it, but the result "
                              "is shifted", names[node], "warning")


# --- targets ------------------------------------------------------------------------------
def _ort_cpu(model: ir.Model, path: Path, report: CheckReport) -> Iterator[Finding]:
    # NOTE: every model goes through onnxruntime: a node without a CPU kernel fails here.
    try:
        # NOTE: from the file: no second in-memory copy of the weights.
        fusion = fusion_report(path)
    except FusionCheckError as e:
        yield Finding("ort-cpu-load", str(e))
        return
    if not any(is_q(n) or is_dq(n) for n in model.graph) and not fusion.kernels:
        return
    report.fusion = fusion
    for group in fusion.unfused:
        if group.wasted:
            yield Finding("ort-cpu-unfused", f"stays float on ORT CPU ({group.kernel}): {group.reason}; "
                          "the Q/DQ around it only add time", group.node, "warning")
        else:
            yield Finding("ort-cpu-float-op", f"stays float on ORT CPU ({group.kernel}): {group.reason}; "
                          "its Q/DQ serve fused neighbours", group.node, "info")
    for text in fusion.notes:
        yield Finding("ort-cpu-subgraphs", text, None, "info")
    for text in fusion.warnings:
        rule = "ort-cpu-saturation" if text.startswith("u8s8") else "ort-cpu-slow-kernel"
        yield Finding(rule, text, None, "warning")


def _qnn(model: ir.Model) -> Iterator[Finding]:
    """QNN HTP: static shapes, and every node on the HTP as measured on its simulator."""
    from onnxq.targets import qnn_htp

    dynamic = [v for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]
    for value in dynamic:
        yield Finding("qnn-static-shapes", f"input '{value.name}' has dynamic dims; the HTP runs static shapes "
                      "only ('onnxq quantize --target qnn' fixes them from the calibration samples)")
    if dynamic:
        return
    if not qnn_htp.available():
        yield Finding("qnn-offload", f"offload not measured: {qnn_htp.INSTALL_HINT}", None, "warning")
        return
    try:
        offload = qnn_htp.offload(model)
    except Exception as e:  # noqa: BLE001  # onnxruntime raises its own types
        yield Finding("qnn-offload", f"the QNN EP cannot load the model: {first_line(e)}")
        return
    for name, op in offload.fallbacks:
        yield Finding("qnn-offload", f"{op} runs on the CPU EP, not the HTP (measured on the simulator)", name)
    if offload.fallbacks and offload.refusal:
        yield Finding("qnn-offload", f"refused with the CPU fallback disabled: {offload.refusal}")
    yield Finding("qnn-offload", offload.summary(), None, "info")


def _mobile(path: Path, target: str) -> Iterator[Finding]:
    """Nodes onnxruntime would not hand to NNAPI / CoreML (:mod:`onnxq.targets.mobile`)."""
    from onnxq.targets import mobile

    try:
        found = mobile.partitions(path, target)
    except Exception as e:  # noqa: BLE001  # onnxruntime cannot load or optimize it
        yield Finding(f"{target}-partitions", f"onnxruntime cannot load the model to partition it: {first_line(e)}")
        return
    for node in found.unsupported:
        yield Finding(f"{target}-partitions", f"{node.op} runs on the CPU EP: {node.reason}", node.node, "warning")
    yield Finding(f"{target}-partitions", found.summary(), None, "info")
    for caveat in found.caveats:
        yield Finding(f"{target}-caveat", f"not checked: {caveat.strip()}", None, "info")


def _xnnpack(model: ir.Model) -> Iterator[Finding]:
    """Nodes XNNPACK's EP would not take, by the rules of its source (:mod:`onnxq.targets.xnnpack`)."""
    from onnxq.targets import xnnpack

    found = xnnpack.partition(model)
    for node in found.left:
        yield Finding("xnnpack-nodes", f"{node.op} runs on the CPU EP: {node.reason}", node.node, "warning")
    yield Finding("xnnpack-nodes", found.summary(), None, "info")


def _tensorrt(model: ir.Model) -> Iterator[Finding]:
    try:
        rules = importlib.import_module("onnxq.targets.tensorrt_rules")
    except ImportError:
        yield Finding("tensorrt-rules", "TensorRT rules (onnxq.targets.tensorrt_rules) are not available in "
                      "this build; only the generic rules ran", None, "warning")
        return
    check_fn = getattr(rules, "check_tensorrt", None)
    if check_fn is None:
        yield Finding("tensorrt-rules", "onnxq.targets.tensorrt_rules has no check_tensorrt(model)", None, "warning")
        return
    for v in check_fn(model):
        severity = getattr(v, "severity", "error")
        yield Finding(f"tensorrt-{getattr(v, 'rule', 'rule')}", getattr(v, "message", str(v)),
                      getattr(v, "node", None), severity if severity in ("error", "warning", "info") else "error")
