"""The checks every conversion ends with: ONNX checker, shape inference, numeric comparison.

Converters (torch.onnx, tf2onnx) can return models that fail the ONNX checker
(tf2onnx does with TFLite resource variables) or compute something else than the
source, and say so quietly if at all. These checks turn that into a
:class:`ConversionError` naming the source. Models above the 2 GB protobuf limit
are checked through a temporary file with external data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxq import runtime
from onnxq.errors import ConversionError, first_line
from onnxq.ir import io as ir_io

logger = logging.getLogger(__name__)

#: Quantization steps an output of an integer (int8 .tflite) source may differ by: "a few LSB".
#: onnxruntime's and TFLite's int8 kernels round requantization differently (MLAS in float,
#: TFLite in fixed point), and a one-step difference inside grows through the layers after it.
QUANTIZED_STEPS = 3




def check_model(model: ir.Model, *, where: str, stage: str) -> None:
    """Runs ``onnx.checker.check_model(full_check=True)``; a failure is a ConversionError."""
    with _as_onnx(model) as proto_or_path:
        try:
            onnx.checker.check_model(proto_or_path, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ConversionError(f"{where}: {stage} is not a valid ONNX model: {first_line(e)}") from e


def infer_shapes(model: ir.Model, *, where: str) -> None:
    """Strict ONNX shape inference; fills in types and dims the exporter left unknown.

    Known dims are never replaced: exporter shapes (with their symbolic expressions)
    are more precise than what inference derives.
    """
    with _as_onnx(model) as proto_or_path:
        try:
            if isinstance(proto_or_path, str):
                out = proto_or_path + ".inferred.onnx"
                onnx.shape_inference.infer_shapes_path(proto_or_path, out, strict_mode=True, data_prop=True)
                inferred = onnx.load(out, load_external_data=False)
            else:
                inferred = onnx.shape_inference.infer_shapes(
                    proto_or_path, check_type=True, strict_mode=True, data_prop=True
                )
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
            raise ConversionError(
                f"{where}: shape inference fails on the converted model: {first_line(e)}"
            ) from e
    inferred_model = ir.serde.deserialize_model(inferred)
    for graph, inferred_graph in zip(model.graphs(), inferred_model.graphs(), strict=False):
        known = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            if name in known:
                _merge_value(value, known[name])


def compare_with_source(
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    expected: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    where: str,
    rtol: float,
    atol: float,
    reference: str,
    optimized: bool = False,
    steps: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Runs the model on onnxruntime CPU and compares with the source's outputs.

    ``steps``: output name -> its quantization step (1 for integer outputs) in an integer source
    (an int8 ``.tflite``): those outputs may differ by :data:`QUANTIZED_STEPS` steps, because two
    runtimes round the same int8 arithmetic differently, and no more.

    Returns:
        Max abs diff per output name.

    Raises:
        ConversionError: onnxruntime cannot run the model, or outputs differ beyond tolerance.
    """
    output_names = [v.name or "" for v in model.graph.outputs]
    if isinstance(expected, Mapping):
        missing = [n for n in output_names if n not in expected]
        if missing:
            raise ConversionError(
                f"{where}: {reference} has no output for ONNX output(s) {', '.join(missing)}"
            )
        want = {n: np.asarray(expected[n]) for n in output_names}
    else:
        if len(expected) != len(output_names):
            raise ConversionError(
                f"{where}: the converted model has {len(output_names)} outputs, {reference} returned "
                f"{len(expected)}"
            )
        want = {n: np.asarray(e) for n, e in zip(output_names, expected, strict=True)}
    stage = "converted model" + (" (after cleanup)" if optimized else "")
    try:
        with _as_onnx(model) as target:
            # NOTE: runtime.run takes a model or a path; a proto means "small", pass the model.
            got = runtime.run(target if isinstance(target, str) else model, feeds)
    except Exception as e:  # noqa: BLE001  # onnxruntime raises many types; all mean "cannot run"
        raise ConversionError(f"{where}: onnxruntime cannot run the {stage}: {first_line(e)}") from e
    diffs = {name: _max_abs_diff(got.get(name), w) for name, w in want.items()}
    steps = dict(steps or {})
    problems = runtime.compare({n: w for n, w in want.items() if n not in steps}, got, rtol=rtol, atol=atol)
    for name, step in steps.items():
        have = got.get(name)
        if have is None or np.shape(have) != want[name].shape or np.asarray(have).dtype != want[name].dtype:
            problems.extend(runtime.compare({name: want[name]}, got, rtol=rtol, atol=atol))
            continue
        found = runtime.compare({name: want[name].astype(np.float64)}, {name: np.asarray(have, np.float64)},
                                rtol=0.0, atol=QUANTIZED_STEPS * step * (1 + 1e-6))
        problems.extend(dataclasses.replace(
            p, detail=f"{p.detail} (more than {QUANTIZED_STEPS} quantization steps of {step:g})") for p in found)
    if problems:
        detail = "; ".join(str(p) for p in problems[:3])
        raise ConversionError(f"{where}: the {stage} computes something else than {reference}: {detail}")
    logger.info("numeric check passed: %s", ", ".join(f"{k}={v:.3g}" for k, v in diffs.items()))
    return diffs


def _max_abs_diff(got: np.ndarray | None, want: np.ndarray) -> float:
    if got is None or np.shape(got) != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    if want.dtype.kind in "fc":
        both_nan = np.isnan(want) & np.isnan(got)
        diff = np.where(both_nan, 0.0, np.abs(np.asarray(got, np.float64) - want.astype(np.float64)))
        return float(np.max(diff))
    return float(np.max(np.abs(np.asarray(got, np.float64) - want.astype(np.float64))))


def _merge_value(value: ir.Value, inferred: ir.Value) -> None:
    if value.dtype is None and inferred.dtype is not None:
        value.dtype = inferred.dtype
    if inferred.shape is None:
        return
    if value.shape is None:
        value.shape = inferred.shape
        return
    if value.shape.rank() != inferred.shape.rank():
        return
    merged = list(value.shape.dims)
    changed = False
    for i, (mine, theirs) in enumerate(zip(value.shape.dims, inferred.shape.dims, strict=True)):
        if _is_unknown(mine) and not _is_unknown(theirs):
            merged[i] = theirs
            changed = True
    if changed:
        denotations = [value.shape.get_denotation(i) for i in range(value.shape.rank())]
        value.shape = ir.Shape(merged, denotations=denotations)


def _is_unknown(dim: int | ir.SymbolicDim) -> bool:
    # NOTE: onnx shape inference invents 'unk__N' symbols; they say no more than "unknown".
    return isinstance(dim, ir.SymbolicDim) and (not dim.value or dim.value.startswith("unk__"))


@contextlib.contextmanager
def _as_onnx(model: ir.Model) -> Iterator[onnx.ModelProto | str]:
    """The model as a proto, or as a file (with external data) in a temp folder when too big for one."""
    if ir_io.tensor_bytes(model) <= ir_io.PROTOBUF_LIMIT_BYTES:
        yield ir.serde.serialize_model(model)
        return
    tmp = Path(tempfile.mkdtemp(prefix="onnxq-convert-"))
    try:
        path = tmp / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        yield os.fspath(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
