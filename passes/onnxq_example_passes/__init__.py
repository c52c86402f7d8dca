"""Example out-of-tree onnxq passes; each is published in pyproject.toml's ``onnxq.passes`` entry points."""

from __future__ import annotations

from onnxq_example_passes.remove_dropout import RemoveDropout

__all__ = ["RemoveDropout"]
