"""``convert(path)``: pick the converter from what the source path is.

A ``.pt2`` file goes to torch.onnx, a SavedModel folder, ``.keras``, ``.h5`` and
``.tflite`` go to tf2onnx. Anything else is refused with the list of what is
accepted, and with a hint for the usual mix-ups (a ``.pt`` state dict, an ``.onnx``
file that needs no conversion).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from onnxq.convert.common import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, ConversionResult
from onnxq.errors import ConversionError, ModelLoadError

#: Source kinds :func:`convert` recognises, with what identifies them.
SOURCE_KINDS = {
    "pt2": "a .pt2 file written by torch.export.save",
    "saved_model": "a TensorFlow SavedModel folder (with saved_model.pb)",
    "keras": "a Keras .keras file",
    "h5": "a Keras .h5 file",
    "tflite": "a TFLite .tflite file",
}
_EXPECTED = "expected a .pt2 file, a SavedModel folder, or a .keras, .h5 or .tflite file"
_SUFFIXES = {".pt2": "pt2", ".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite"}
_HINTS = {
    ".pt": "a .pt/.pth file holds weights or a pickled module, not a graph; save one with "
    "torch.export.save(torch.export.export(model, args), 'model.pt2')",
    ".pth": "a .pt/.pth file holds weights or a pickled module, not a graph; save one with "
    "torch.export.save(torch.export.export(model, args), 'model.pt2')",
    ".onnx": "it is already ONNX; use 'onnxq run' to transform it",
    ".pb": "a frozen TF1 graph is not supported; give the SavedModel folder that holds saved_model.pb",
}


def detect_source_kind(path: str | os.PathLike[str]) -> str:
    """The kind of source at ``path`` (a key of :data:`SOURCE_KINDS`).

    Raises:
        ModelLoadError: Nothing exists at ``path``.
        ConversionError: The path is not a supported source.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ConversionError(f"{path}: unsupported source: a folder without saved_model.pb; {_EXPECTED}")
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    hint = f"; {_HINTS[suffix]}" if suffix in _HINTS else ""
    raise ConversionError(f"{path}: unsupported source '{suffix or path.name}'; {_EXPECTED}{hint}")


def convert(
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic: Mapping[str, str] | None = None,
    optimize: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts a framework export to a checked ONNX model; the converter follows the path.

    Args:
        path: A .pt2 file, a SavedModel folder, or a .keras, .h5 or .tflite file.
        opset: ONNX opset (default 18; torch accepts 18-23, TensorFlow 13-18).
        dynamic: ``{"x": "batch", "x:1": "seq"}``: input (axis 0) or input:axis -> dim name.
            For .keras/.h5 the axes become dynamic; other sources only name axes that
            are already dynamic in the file.
        optimize: Run onnxq's ``cleanup`` pipeline on the result.
        rtol: Relative tolerance of the numeric check against the source framework.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: The framework for this source is not installed.
        ModelLoadError: The source is missing or unreadable.
        ConversionError: Unsupported source, failed conversion, or failed checks.
    """
    kind = detect_source_kind(path)
    common = {
        "opset": DEFAULT_OPSET if opset is None else opset,
        "dynamic": dynamic,
        "optimize": optimize,
        "rtol": rtol,
        "atol": atol,
    }
    if kind == "pt2":
        from onnxq.convert.torch_export import from_pt2

        return from_pt2(path, **common)  # type: ignore[arg-type]
    from onnxq.convert import tf_export

    if kind == "saved_model":
        return tf_export.from_saved_model(path, **common)  # type: ignore[arg-type]
    if kind in ("keras", "h5"):
        return tf_export.from_keras(path, **common)  # type: ignore[arg-type]
    if kind == "tflite":
        from onnxq.convert.tflite_export import from_tflite

        return from_tflite(path, **common)  # type: ignore[arg-type]
    raise ConversionError(f"{path}: unsupported source kind '{kind}'")  # pragma: no cover
