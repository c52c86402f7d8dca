"""Measured placement: which quantized nodes run slower in INT8 than in float on this CPU.

The placement plan (``passes/quantization/_plan.py``) decides from the target's rules which nodes
get integer kernels. Rules do not see what a kernel costs on a given CPU and shape: onnxruntime's
QLinearConv on a 3-channel stem, a depthwise or an 8-channel convolution, its broadcasting
QLinearMul (a squeeze-excitation gate), or its uint8 MaxPool can be slower than the float kernels
they replace, and the float ones often have a fused activation for free. Measured on a VNNI Xeon
(1 thread): PP-OCR's direction classifier ran its QLinearConv in 0.97 ms where the float
convolutions took 0.58 ms, its lowered HardSwish / SE QLinearMul in 0.42 ms against 0.07 ms.

This module profiles two sessions, the optimized float model and a quantized one, with
onnxruntime's own per-node profiler (``SessionOptions.enable_profiling``, 1 thread, as deployed),
attributes each kernel to the node of the ONNX graph it came from, and names the quantized nodes
whose kernel costs more than the float kernel of the same node. The guard re-quantizes with those
nodes left float and keeps the result only if it is faster as a whole (the Q/DQ a float node adds
around it are paid there, so node costs are a proposal, the end-to-end timing the judge).

Kernel names in the profile (onnxruntime 1.2x-1.3x): a fused or layout-transformed node keeps the
graph node's name with a ``_token_<n>`` suffix (QLinearConv, NHWC); a float convolution moved to
the NCHWc layout is named after its output tensor plus ``_nchwc``, the output of the last op fused
into it (Relu, Clip, HardSwish, a residual Add); layout reorders and transposes the optimizer adds
belong to no node and are left out on both sides.

Hand-written: onnxruntime exposes the profile as a JSON trace and nothing maps it back to nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

#: Quantized kernels a node can be left float from (the plan's anchors and its integer elementwise ops).
QUANTIZED_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger",
    "QLinearMul", "QLinearAdd", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
    "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax", "QLinearWhere",
})
ANCHORS = frozenset({"Conv", "MatMul", "Gemm"})
#: A node is proposed when its INT8 kernel costs this factor more than its float kernel ...
SLOWER_BY = 1.15
#: ... and the difference is at least this share of the quantized model's kernel time.
MIN_SHARE = 0.005
#: Profiling time per model (seconds of runs, at least MIN_RUNS, at most MAX_RUNS).
BUDGET_S = 1.5
MIN_RUNS = 5
MAX_RUNS = 50
_TOKEN = re.compile(r"_token_\d+$")


@dataclasses.dataclass
class NodeCost:
    """One graph node's kernel time per run in the float and the quantized session (microseconds)."""

    name: str
    op_type: str
    kernel: str
    float_us: float
    int8_us: float


@dataclasses.dataclass
class Placement:
    """What :func:`measure` found: the nodes to leave float and the figures behind them."""

    slower: list[NodeCost]
    float_total_us: float
    int8_total_us: float
    seconds: float

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.slower]

    def summary(self) -> str:
        if not self.slower:
            return "no INT8 kernel slower than its float one"
        kinds = collections.Counter(c.kernel for c in self.slower)
        saved = sum(c.int8_us - c.float_us for c in self.slower)
        names = ", ".join(c.name for c in self.slower[:8]) + (" ..." if len(self.slower) > 8 else "")
        return (f"{len(self.slower)} node(s) slower in INT8 ({', '.join(f'{n} {k}' for k, n in kinds.most_common())}; "
                f"{saved / 1000:.2f} of {self.int8_total_us / 1000:.2f} ms per run): {names}")


def kernel_times(model: ir.Model, feed: Mapping[str, Any], *, budget_s: float = BUDGET_S) -> tuple[
        dict[str, tuple[str, float]], float]:
    """``{profile node name: (kernel op, microseconds per run)}`` and the total kernel time per run."""
    from onnxq.runtime import select_inputs, session_bytes, session_options

    source, folder = session_bytes(model)
    with tempfile.TemporaryDirectory(prefix="onnxq-profile-") as tmp:
        opts = session_options(optimize=True, threads=1, external_folder=folder)
        opts.inter_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        import onnxruntime as ort

        sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        inputs = select_inputs(model, feed)
        began = time.perf_counter()
        sess.run(None, inputs)  # warm-up, profiled too: subtracted below
        once = time.perf_counter() - began
        runs = int(min(MAX_RUNS, max(MIN_RUNS, budget_s / max(once, 1e-6))))
        for _ in range(runs):
            sess.run(None, inputs)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node[name].append(float(e["dur"]))
            ops[name] = str(e.get("args", {}).get("op_name", ""))
    # NOTE: the first run (warm-up: allocations, packing) is dropped from every node's list.
    times = {k: (ops[k], sum(v[1:]) / max(len(v) - 1, 1)) for k, v in per_node.items()}
    return times, sum(t for _, t in times.values())


def _graph_nodes(model: ir.Model) -> tuple[dict[str, ir.Node], dict[str, ir.Node]]:
    by_name = {n.name: n for n in model.graph if n.name}
    producers = {o.name: n for n in model.graph for o in n.outputs if o.name}
    return by_name, producers


def _attribute(profile_name: str, by_name: Mapping[str, ir.Node], producers: Mapping[str, ir.Node]) -> ir.Node | None:
    """The graph node a profiled kernel belongs to, or None (a reorder or transpose of the optimizer)."""
    name = _TOKEN.sub("", profile_name)
    if name in by_name:
        return by_name[name]
    if name.endswith("_nchwc"):
        # NOTE: named after the output of the last op fused into the convolution: walk back to it.
        node = producers.get(name[: -len("_nchwc")])
        for _ in range(4):
            if node is None or node.op_type in ANCHORS:
                return node
            node = next((v.producer() for v in node.inputs if v is not None and v.producer() is not None), None)
    return None


def node_costs(float_model: ir.Model, int8_model: ir.Model, feed: Mapping[str, Any], *,
               budget_s: float = BUDGET_S) -> tuple[list[NodeCost], float, float]:
    """Per graph node of the quantized model that runs a quantized kernel: its INT8 and float kernel times."""
    f_times, f_total = kernel_times(float_model, feed, budget_s=budget_s)
    q_times, q_total = kernel_times(int8_model, feed, budget_s=budget_s)
    f_names, f_producers = _graph_nodes(float_model)
    q_names, q_producers = _graph_nodes(int8_model)
    float_us: dict[str, float] = collections.defaultdict(float)
    for k, (_, us) in f_times.items():
        node = _attribute(k, f_names, f_producers)
        if node is not None and node.name:
            float_us[node.name] += us
    int8: dict[str, tuple[str, str, float]] = {}
    for k, (kernel, us) in q_times.items():
        node = _attribute(k, q_names, q_producers)
        if kernel in QUANTIZED_KERNELS and node is not None and node.name:
            _, _, before = int8.get(node.name, (kernel, node.op_type, 0.0))
            int8[node.name] = (kernel, node.op_type, before + us)
    costs = [NodeCost(name, op, kernel, float_us[name], us) for name, (kernel, op, us) in int8.items()
             # NOTE: a node with no float kernel of its own was fused into a neighbour there (an Add into
             # its convolution): leaving it float would not give that fusion back, so it is not proposed.
             if name in float_us]
    return costs, f_total, q_total


def measure(float_model: ir.Model, int8_model: ir.Model, feed: Mapping[str, Any], *,
            budget_s: float = BUDGET_S, slower_by: float = SLOWER_BY, min_share: float = MIN_SHARE) -> Placement:
    """The quantized nodes of ``int8_model`` whose INT8 kernel is slower than their float one, slowest first."""
    began = time.perf_counter()
    costs, f_total, q_total = node_costs(float_model, int8_model, feed, budget_s=budget_s)
    slower = [c for c in costs if c.int8_us > c.float_us * slower_by and c.int8_us - c.float_us >= min_share * q_total]
    slower.sort(key=lambda c: (c.float_us - c.int8_us, c.name))
    return Placement(slower, f_total, q_total, time.perf_counter() - began)
