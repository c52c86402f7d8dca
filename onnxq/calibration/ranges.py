"""Calibrated activation ranges: the artifact calibration produces and quantization consumes.

``Ranges`` is a PassContext resource (``insert-qdq`` needs it). It maps a tensor name to the
float interval ``[min, max]`` chosen by the calibration method, and carries the method and the
fingerprint of the model it was measured on, so a ranges file is reused only on that model.
:func:`model_fingerprint` computes that fingerprint: a digest of the model's structure that is
stable across processes and machines (unlike the id()-based one in framework.instrumentation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxq.errors import UserError
from onnxq.framework.context import Resource

FORMAT = "onnxq.ranges/1"


class RangesError(UserError):
    """A ranges file is unreadable, malformed, or was measured on another model."""


@dataclasses.dataclass(frozen=True)
class TensorRange:
    """The float interval a tensor is quantized over (``min <= max``, both finite)."""

    min: float
    max: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max)) or self.min > self.max:
            raise ValueError(f"invalid range [{self.min}, {self.max}]")


@dataclasses.dataclass
class Ranges(Resource, Mapping[str, TensorRange]):
    """Tensor name -> calibrated range, plus how and on which model it was measured."""

    tensors: dict[str, TensorRange]
    method: str = "minmax"
    fingerprint: str | None = None
    samples: int = 0
    #: Free-form details of the method (percentile, bins...), written to the JSON file.
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> TensorRange:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    # --- JSON artifact ------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "fingerprint": self.fingerprint,
            "samples": self.samples,
            "details": self.details,
            "tensors": {name: [r.min, r.max] for name, r in sorted(self.tensors.items())},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the ranges as JSON atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, source: str = "ranges") -> Ranges:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise RangesError(f"{source}: not an onnxq ranges file (expected format {FORMAT!r})")
        tensors = {}
        for name, pair in dict(doc.get("tensors") or {}).items():
            try:
                lo, hi = (float(v) for v in pair)
                tensors[name] = TensorRange(lo, hi)
            except (TypeError, ValueError) as e:
                raise RangesError(f"{source}: tensor '{name}': bad range {pair!r} ({e})") from None
        return cls(
            tensors=tensors,
            method=str(doc.get("method", "minmax")),
            fingerprint=doc.get("fingerprint"),
            samples=int(doc.get("samples", 0)),
            details=dict(doc.get("details") or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, fingerprint: str | None = None) -> Ranges:
        """Reads a ranges file; with ``fingerprint``, refuses one measured on another model."""
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise RangesError(f"{path}: cannot read ranges ({e})") from None
        ranges = cls.from_json(doc, source=str(path))
        if fingerprint is not None and ranges.fingerprint not in (None, fingerprint):
            raise RangesError(
                f"{path}: ranges were measured on another model (fingerprint {ranges.fingerprint} != "
                f"{fingerprint}); recalibrate or drop --ranges"
            )
        return ranges


# --- model fingerprint ---------------------------------------------------------------
def _shape_key(value: ir.Value) -> list[Any]:
    dtype = value.dtype.name if value.dtype is not None else None
    shape = None if value.shape is None else [d if isinstance(d, int) else str(d) for d in value.shape]
    return [value.name, dtype, shape]


def _attr_key(attr: ir.Attr) -> Any:
    if attr.is_ref():
        return ["REF", attr.ref_attr_name]
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        graphs = [attr.value] if kind == ir.AttributeType.GRAPH else list(attr.value)
        return [kind.name, [_graph_key(g) for g in graphs]]
    if kind in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
        tensors = [attr.value] if kind == ir.AttributeType.TENSOR else list(attr.value)
        # NOTE: attribute tensors (Constant values) are small and change activations, so their
        # bytes count; initializers below count by name, type and shape only (reading gigabytes
        # of weights to fingerprint a model would defeat lazy loading).
        return [
            kind.name,
            [[t.dtype.name, list(t.shape), hashlib.sha256(t.tobytes()).hexdigest()] for t in tensors],
        ]
    value = attr.value
    if isinstance(value, (list, tuple)):
        return [kind.name, [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        value = repr(value)
    if isinstance(value, (int, float, str)) or value is None:
        return [kind.name, value]
    return [kind.name, repr(value)]


def _graph_key(graph: ir.Graph) -> dict[str, Any]:
    return {
        "inputs": [_shape_key(v) for v in graph.inputs],
        "outputs": [_shape_key(v) for v in graph.outputs],
        "initializers": sorted(
            [name, v.dtype.name if v.dtype else None, list(v.shape) if v.shape is not None else None]
            for name, v in graph.initializers.items()
        ),
        "nodes": [
            [
                node.domain,
                node.op_type,
                node.overload,
                [v.name if v is not None else "" for v in node.inputs],
                [v.name for v in node.outputs],
                sorted([name, _attr_key(attr)] for name, attr in node.attributes.items()),
            ]
            for node in graph
        ],
    }


def model_fingerprint(model: ir.Model) -> str:
    """A stable digest of the model's structure (``sha256:...``), the same in every process.

    Covers the opsets, every graph's inputs/outputs (names, types, shapes), nodes (op, domain,
    input/output names, attributes including subgraphs and Constant tensors), initializers'
    names, types and shapes, and local functions. Initializer *contents* are not read, so the
    fingerprint of a large model with external data stays cheap.
    """
    doc = {
        "opsets": sorted(model.opset_imports.items()),
        "graph": _graph_key(model.graph),
        "functions": [
            [
                f.domain,
                f.name,
                f.overload,
                [v.name for v in f.inputs],
                [v.name for v in f.outputs],
                [
                    [
                        n.domain,
                        n.op_type,
                        [v.name if v else "" for v in n.inputs],
                        [v.name for v in n.outputs],
                        sorted([k, _attr_key(a)] for k, a in n.attributes.items()),
                    ]
                    for n in f
                ],
            ]
            for _, f in sorted(model.functions.items())
        ],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
