"""NNAPI (Android) and CoreML (iOS): which nodes onnxruntime would hand to the EP, in how many partitions.

Neither EP runs on this machine; onnxruntime's wheel ships what its own mobile usability checker
knows (``onnxruntime.tools.mobile_helpers.usability_checker``): the supported-op tables
(``nnapi_supported_ops.md``, ``coreml_supported_mlprogram_ops.md``) and a copy of the C++
partitioner (``CreateSupportedPartitionNodeGroups``). This module runs that checker exactly as
``check_onnx_model_mobile_usability`` does (onnxruntime's basic optimizations first, then shape
inference, inputs of a supported node must have fixed shapes, CoreML's rank limit of 5) and adds
what its summary leaves out: every node that would not run on the EP, named, with why: the op has
no entry in the EP's table, an input's shape is dynamic (named), or an input's rank is too high.
The same partitioning without the fixed-shape requirement says what ``--fix-shape`` would gain.

Hand-written is only the per-node reason: onnxruntime's checker counts nodes by cause but does
not name them.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Target name -> (EP name, onnxruntime's supported-op table, largest input rank).
EPS: dict[str, tuple[str, str, int]] = {
    "nnapi": ("NNAPI", "nnapi_supported_ops.md", 999),
    "coreml": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md", 5),
}


@dataclasses.dataclass(frozen=True)
class Unsupported:
    node: str
    op: str
    reason: str


@dataclasses.dataclass
class Partitions:
    """How onnxruntime would split a model between a mobile EP and the CPU."""

    ep: str
    nodes: int
    supported: int
    partitions: int
    unsupported: list[Unsupported]
    #: Supported nodes and partitions if every shape were fixed (None: the model has no dynamic input).
    fixed_shapes: tuple[int, int] | None
    #: Caveats of the supported ops in the EP's table that onnxruntime's checker cannot verify.
    caveats: list[str]

    def summary(self) -> str:
        text = (f"{self.ep}: {self.supported}/{self.nodes} nodes in {self.partitions} partition(s) "
                "(onnxruntime's mobile usability checker, after its basic optimizations)")
        if self.fixed_shapes is not None and self.fixed_shapes[0] != self.supported:
            text += f"; with fixed input shapes: {self.fixed_shapes[0]}/{self.nodes} in {self.fixed_shapes[1]}"
        return text


def _checker() -> Any:
    from onnxruntime.tools.mobile_helpers import usability_checker

    return usability_checker


def partitions(path: str | os.PathLike[str], target: str) -> Partitions:
    """The partitions of the model at ``path`` on ``target`` (``nnapi`` or ``coreml``)."""
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo

    uc = _checker()
    ep, table, max_rank = EPS[target]
    with tempfile.TemporaryDirectory(prefix="onnxq-mobile-") as tmp:
        optimized = Path(tmp) / "model.onnx"
        uc.optimize_model(Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized.resolve()).model_with_shape_info
    config = Path(uc.__file__).parent / table
    ops = uc._SupportedOpsChecker(config)  # noqa: SLF001  # the checker's own table reader
    info = uc.check_partitioning(model.graph, ops, True, max_rank)
    dynamic, _ = uc.check_shapes(model.graph)
    fixed = None
    if dynamic:
        relaxed = uc.check_partitioning(model.graph, uc._SupportedOpsChecker(config), False, max_rank)  # noqa: SLF001
        fixed = (relaxed.num_supported_nodes, relaxed.num_partitions)
    taken = {id(node) for group in info.supported_groups for node in group}
    unsupported = [u for node, values in _nodes(model.graph, {}) if id(node) not in taken
                   for u in [_why(node, ops, values, max_rank, ep)]]
    return Partitions(ep, info.num_nodes, info.num_supported_nodes, info.num_partitions, unsupported, fixed,
                      ops.get_caveats())


def _nodes(graph: Any, outer: dict[str, Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every node with the value infos it sees (the checker's scoping), subgraphs after their graph."""
    values = dict(outer)
    values.update({v.name: v for v in [*graph.input, *graph.output, *graph.value_info]})
    for init in graph.initializer:
        values[init.name] = None  # a constant: fixed shape
    for node in graph.node:
        yield node, values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g, values)


def _why(node: Any, ops: Any, values: dict[str, Any], max_rank: int, ep: str) -> Unsupported:
    uc = _checker()
    op = f"{node.domain or 'ai.onnx'}:{node.op_type}"
    reasons = []
    if not ops.is_op_supported(node):
        reasons.append(f"{ep} has no kernel for {op}")
    dynamic = [i for i in node.input if i and i in values and values[i] is not None
               and not uc.is_fixed_size_tensor(values[i])]
    unknown = [i for i in node.input if i and i not in values]
    if "" in node.input:
        reasons.append("an omitted optional input (onnxruntime's checker counts it as a dynamic shape)")
    if dynamic or unknown:
        reasons.append("input " + ", ".join(f"'{i}'" for i in (dynamic + unknown)[:3])
                       + (" has a dynamic shape" if not unknown else " has a dynamic or unknown shape"))
    ranks = [len(values[i].type.tensor_type.shape.dim) for i in node.input
             if i and values.get(i) is not None and values[i].type.HasField("tensor_type")]
    if any(r > max_rank for r in ranks) or (node.op_type == "Transpose" and node.attribute
                                            and len(node.attribute[0].ints) > max_rank):
        reasons.append(f"an input's rank is above {ep}'s limit of {max_rank}")
    if not reasons:
        reasons.append(f"left out of {ep}'s partitions (it borders an unsupported node)")
    return Unsupported(node.name or f"{node.op_type} -> {node.output[0] if node.output else '?'}", op,
                       "; ".join(reasons))
