"""Structural checks run on every loaded model, before any pass touches it.

The onnx checker accepts some broken graphs (cycles are only found by ORT at
session creation) and onnx_ir deserializes almost anything, so we check here what
a pass relies on: imported opsets, known domains, acyclic graphs, defined values.
Written by hand because no library reports these with the culprit's name.
"""

from __future__ import annotations

import functools

import onnx
import onnx_ir as ir

from onnxq.errors import ModelLoadError

#: Domains that runtimes know besides onnx's own (onnxruntime contrib ops, extensions).
KNOWN_EXTRA_DOMAINS = frozenset(
    {
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.ms.internal.nhwc",
        "com.microsoft.experimental",
        "ai.onnx.contrib",
        "ai.onnx.preview.training",
        "ai.onnx.preview",
        "trt.plugins",
    }
)


@functools.lru_cache(maxsize=1)
def known_domains() -> frozenset[str]:
    """onnx's registered domains plus :data:`KNOWN_EXTRA_DOMAINS`."""
    onnx_domains = {s.domain for s in onnx.defs.get_all_schemas_with_history()}
    return frozenset(onnx_domains | {"", "ai.onnx"} | KNOWN_EXTRA_DOMAINS)


def check_structure(model: ir.Model, *, where: str = "model") -> None:
    """Raises ModelLoadError naming the first structural problem found.

    Args:
        model: The model to check.
        where: A file name or label used as the message prefix.
    """
    imports = model.opset_imports
    if not imports:
        raise ModelLoadError(f"{where}: model has no opset_import; re-export it with an opset")
    function_domains = {f.domain for f in model.functions.values()}
    declared = {("" if d == "ai.onnx" else d) for d in imports}
    known = known_domains() | function_domains
    for node in _all_nodes(model):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in declared and domain not in function_domains:
            raise ModelLoadError(
                f"{where}: node '{node.name}' ({node.op_type}) uses domain "
                f"'{domain or 'ai.onnx'}' which the model does not import in opset_import"
            )
        if domain not in known:
            raise ModelLoadError(
                f"{where}: node '{node.name}' ({node.op_type}) uses unknown domain '{domain}'; "
                "no runtime registers it"
            )
    for graph in model.graphs():
        _check_graph(graph, where)
    for function in model.functions.values():
        _check_graph(function, where)


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    return nodes


def _check_graph(graph: ir.Graph | ir.Function, where: str) -> None:
    nodes = list(graph)
    in_graph = {id(n) for n in nodes}
    # Kahn's algorithm over the edges between nodes of this graph.
    pending: dict[int, int] = {}
    consumers: dict[int, list[ir.Node]] = {}
    for node in nodes:
        deps = set()
        for value in _read_values(node):
            producer = value.producer()
            if producer is None:
                if value.graph is None and not value.is_initializer():
                    raise ModelLoadError(
                        f"{where}: node '{node.name}' ({node.op_type}) uses undefined "
                        f"tensor '{value.name}'"
                    )
            elif producer is node:
                raise ModelLoadError(
                    f"{where}: graph has a cycle: node '{node.name}' ({node.op_type}) "
                    "consumes its own output"
                )
            elif id(producer) in in_graph:
                deps.add(id(producer))
        pending[id(node)] = len(deps)
        for dep in deps:
            consumers.setdefault(dep, []).append(node)
    ready = [n for n in nodes if pending[id(n)] == 0]
    done = 0
    while ready:
        node = ready.pop()
        done += 1
        for consumer in consumers.get(id(node), ()):
            pending[id(consumer)] -= 1
            if pending[id(consumer)] == 0:
                ready.append(consumer)
    if done != len(nodes):
        stuck = next(n for n in nodes if pending[id(n)] > 0)
        raise ModelLoadError(
            f"{where}: {'function' if isinstance(graph, ir.Function) else 'graph'} '{graph.name}' has a cycle through node '{stuck.name}' ({stuck.op_type})"
        )


def _read_values(node: ir.Node) -> list[ir.Value]:
    """The node's inputs plus every value its subgraphs read (outer-scope captures)."""
    values = [v for v in node.inputs if v is not None]
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            subgraphs = [attr.as_graph()]
        elif attr.type == ir.AttributeType.GRAPHS:
            subgraphs = list(attr.as_graphs())
        else:
            continue
        for sub in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                values.extend(v for v in inner.inputs if v is not None)
    return values
