"""What every conversion shares: the result type, optional imports, and :func:`finish`.

Every converter ends in :func:`finish`: readable dynamic-dim names, the ONNX
checker with ``full_check``, strict shape inference, optional cleanup, then a
numeric comparison of the source framework's outputs with onnxruntime CPU on the
same inputs (see :mod:`onnxq.convert.verify`). A conversion that fails a check
raises :class:`ConversionError`; it never hands back an unverified model.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq import runtime
from onnxq.convert import dims
from onnxq.convert.verify import QUANTIZED_STEPS, check_model, compare_with_source, first_line, infer_shapes
from onnxq.errors import ConversionError, MissingExtraError, OptionError

#: Opset used when the caller does not choose one.
DEFAULT_OPSET = 18
#: Default tolerances of the numeric check: ``|onnx - source| <= atol + rtol * |source|``.
DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5

_EXTRAS = {
    "torch": ("PyTorch", "torch"),
    "tensorflow": ("TensorFlow", "tf"),
    "tf2onnx": ("tf2onnx", "tf"),
    "keras": ("Keras", "tf"),
}

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "DEFAULT_RTOL",
    "ConversionResult",
    "check_opset",
    "finish",
    "first_line",
    "import_extra",
    "random_array",
]


@dataclasses.dataclass
class ConversionResult:
    """A converted, checked model and what the checks found.

    Attributes:
        model: The ONNX model (onnx_ir); save it with :func:`onnxq.ir.io.save_model`.
        source_kind: ``torch``, ``pt2``, ``saved_model``, ``keras``, ``h5`` or ``tflite``.
        source: The source file, or a description of an in-memory module.
        opset: The default-domain opset of the model.
        max_abs_diff: Largest ``|onnx - source|`` per output on the check inputs.
        rtol: Relative tolerance the outputs were checked against.
        atol: Absolute tolerance the outputs were checked against.
        renamed_dims: Exporter symbol -> readable dim name, as applied.
        optimized: Whether the ``cleanup`` pipeline ran on the model.
        notes: Things the user should know (e.g. that random inputs were used).
    """

    model: ir.Model
    source_kind: str
    source: str
    opset: int
    max_abs_diff: dict[str, float]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    renamed_dims: dict[str, str] = dataclasses.field(default_factory=dict)
    optimized: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [v.name or "" for v in _graph_inputs(self.model)]

    @property
    def input_shapes(self) -> list[list[int | str | None]]:
        return [_shape_list(v.shape) for v in _graph_inputs(self.model)]

    @property
    def output_names(self) -> list[str]:
        return [v.name or "" for v in self.model.graph.outputs]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary (everything but the model itself)."""

        def values(vals: Sequence[ir.Value]) -> list[dict[str, Any]]:
            return [
                {
                    "name": v.name,
                    "dtype": _dtype_name(v.dtype),
                    "shape": _shape_list(v.shape),
                }
                for v in vals
            ]

        return {
            "source": self.source,
            "source_kind": self.source_kind,
            "opset": self.opset,
            "inputs": values(_graph_inputs(self.model)),
            "outputs": values(list(self.model.graph.outputs)),
            "max_abs_diff": dict(self.max_abs_diff),
            "tolerance": {"rtol": self.rtol, "atol": self.atol},
            "renamed_dims": dict(self.renamed_dims),
            "optimized": self.optimized,
            "notes": list(self.notes),
        }


def import_extra(module: str, *, purpose: str) -> ModuleType:
    """Imports an optional dependency, or says which onnxq extra provides it.

    Args:
        module: The module to import (``torch``, ``tensorflow``, ``tf2onnx``, ``keras``).
        purpose: What needs it, e.g. ``"model.pt2: converting a .pt2 file"``.

    Raises:
        MissingExtraError: The module is not installed.
        ConversionError: The module is installed but fails to import.
    """
    top = module.split(".")[0]
    label, extra = _EXTRAS.get(top, (top, top))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == top:
            raise MissingExtraError(
                f"{purpose} needs {label}, which is not installed; pip install 'onnxq[{extra}]'"
            ) from e
        raise ConversionError(f"{purpose}: importing {label} failed: {first_line(e)}") from e
    except ImportError as e:
        raise ConversionError(f"{purpose}: importing {label} failed: {first_line(e)}") from e


def check_opset(opset: int, *, low: int, high: int, where: str, converter: str) -> int:
    """Returns ``opset`` when ``low <= opset <= high``, else a clear ConversionError."""
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise ConversionError(f"{where}: opset must be an integer, got {opset!r}")
    if opset < low:
        raise ConversionError(f"{where}: opset {opset} is too low; {converter} needs opset {low} or newer")
    if opset > high:
        raise ConversionError(f"{where}: opset {opset} is too high; {converter} supports up to opset {high}")
    return opset


def finish(
    model: ir.Model,
    *,
    source_kind: str,
    source: str,
    feeds: Mapping[str, np.ndarray],
    expected: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    requests: Sequence[dims.DimRequest] = (),
    layout: dims.Layout,
    anonymous: str,
    forget_other_anonymous: bool = False,
    static_hint: str = "",
    optimize: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    reference: str = "the source model",
    notes: Sequence[str] = (),
    steps: Mapping[str, float] | None = None,
) -> ConversionResult:
    """Names dims, checks, optionally cleans up, and compares outputs with the source.

    Args:
        model: The converted model; changed in place.
        source_kind: Kind of source, recorded in the result.
        source: The source file (or description), used in every error message.
        feeds: The check inputs by ONNX input name (the same values the source ran on).
        expected: The source's outputs, in ONNX output order or by ONNX output name.
        requests: Dynamic-dim names the user asked for.
        layout: Picks default dim names (``nchw`` for torch, ``nhwc`` for TF).
        anonymous: Regex of the exporter's own dim symbols.
        forget_other_anonymous: See :func:`onnxq.convert.dims.name_dynamic_dims`.
        static_hint: Advice for a request that names a static dimension.
        optimize: Run the ``cleanup`` pipeline before the numeric check.
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.
        reference: How to call the source in messages ("PyTorch", "TensorFlow"...).
        notes: Carried into the result.
        steps: Output name -> quantization step, for outputs of an integer source compared in
            steps (:func:`onnxq.convert.verify.compare_with_source`).

    Raises:
        ConversionError: A check failed; the message names the source and the failure.
    """
    renamed = dims.name_dynamic_dims(
        model,
        requests,
        where=source,
        layout=layout,
        anonymous=anonymous,
        forget_other_anonymous=forget_other_anonymous,
        static_hint=static_hint,
    )
    check_model(model, where=source, stage="the converter's output")
    if optimize:
        from onnxq.framework.pipeline import apply
        from onnxq.framework.registry import PassRegistry

        apply(model, PassRegistry.default().parse("cleanup"))
        check_model(model, where=source, stage="the model after cleanup")
    infer_shapes(model, where=source)
    diffs = compare_with_source(
        model, feeds, expected, where=source, rtol=rtol, atol=atol, reference=reference, optimized=optimize,
        steps=steps,
    )
    if steps:
        notes = [*notes, "int8 source: " + ", ".join(
            f"'{name}' compared within {QUANTIZED_STEPS} quantization steps of {step:g} "
            f"(max diff {diffs.get(name, 0.0) / step:.3g} steps)" for name, step in steps.items())]
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    return ConversionResult(
        model=model,
        source_kind=source_kind,
        source=source,
        opset=opset,
        max_abs_diff=diffs,
        rtol=rtol,
        atol=atol,
        renamed_dims=renamed,
        optimized=optimize,
        notes=list(notes),
    )


def random_array(
    shape: Sequence[int], dtype: np.dtype[Any], rng: np.random.Generator, *, what: str
) -> np.ndarray:
    """Seeded sample data for the numeric check (``onnxq.runtime.random_array``), as a conversion error."""
    try:
        return runtime.random_array(shape, dtype, rng, what=what)
    except OptionError:
        raise ConversionError(f"{what}: cannot make sample inputs of type {dtype}; pass example inputs") from None


def _dtype_name(dtype: ir.DataType | None) -> str | None:
    if dtype is None:
        return None
    try:
        return str(np.dtype(dtype.numpy()))
    except (TypeError, ValueError):
        return dtype.name.lower()


def _graph_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _shape_list(shape: ir.Shape | None) -> list[int | str | None]:
    if shape is None:
        return []
    return [d if isinstance(d, int) else d.value for d in shape.dims]
