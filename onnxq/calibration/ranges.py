"""Calibrated activation ranges: the artifact calibration produces and quantization consumes.

``Ranges`` is a PassContext resource (``insert-qdq`` needs it). It maps a tensor name to the
float interval ``[min, max]`` chosen by the calibration method, and carries the method and the
fingerprint of the model it was measured on, so a ranges file is reused only on that model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

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
