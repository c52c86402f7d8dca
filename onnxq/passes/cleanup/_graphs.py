"""Helpers shared by the cleanup passes: walking every graph, detecting change."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir


def all_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every local function."""
    yield from model.graphs()
    yield from model.functions.values()


def node_count(model: ir.Model) -> int:
    return sum(len(g) for g in all_graphs(model))
