"""TFLite to ONNX via ``tf2onnx.convert.from_tflite``, followed by onnxq's checks.

The reference outputs come from ``tf.lite.Interpreter`` (deprecated in favour of
``ai_edge_litert`` but still shipped with TF 2.21; its warning is silenced). When
the file has exactly one signature, the ONNX inputs and outputs take the
signature's names (``features`` rather than ``serving_default_features:0``).
Dynamic dims are those marked -1 in the file's shape signature; the file fixes the
rest. TensorFlow and tf2onnx are the optional extra ``onnxq[tf]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.convert import dims
from onnxq.convert.common import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    ConversionResult,
    check_opset,
    finish,
    first_line,
    random_array,
)
from onnxq.convert.tf_export import (
    ANONYMOUS_DIM,
    BATCH_SIZE,
    CONVERTER,
    MAX_OPSET,
    MIN_OPSET,
    OTHER_SIZE,
    import_tf,
    renumber_generated_names,
)
from onnxq.errors import ConversionError, ModelLoadError


def from_tflite(
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: Mapping[str, str] | None = None,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    optimize: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts a ``.tflite`` flatbuffer.

    Args:
        path: The .tflite file.
        opset: ONNX opset, 13 to 18.
        dynamic: ``{"x": "batch"}``: names for axes the file leaves dynamic (-1 in its
            shape signature); the file fixes the others.
        example_inputs: Check inputs by (signature or tensor) input name; seeded random
            inputs when omitted.
        optimize: Run onnxq's ``cleanup`` pipeline on the result.
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: TensorFlow or tf2onnx is not installed.
        ModelLoadError: The file is missing or not a TFLite model.
        ConversionError: Conversion failed, or the result is invalid or computes something else.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ModelLoadError(f"{where}: no such file" if not path.exists() else f"{where}: is not a file")
    tf, tf2onnx = import_tf(f"{where}: converting a .tflite file")
    check_opset(opset, low=MIN_OPSET, high=MAX_OPSET, where=where, converter=CONVERTER)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NOTE: tf.lite.Interpreter warns that it is deprecated
            interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
        interpreter.allocate_tensors()
    except Exception as e:  # noqa: BLE001  # the TFLite runtime raises ValueError/RuntimeError
        raise ModelLoadError(f"{where}: not a valid TFLite model: {first_line(e)}") from e
    aliases = _signature_names(interpreter)
    arrays, expected = _run_interpreter(interpreter, aliases, example_inputs, where)
    steps = _quantization_steps(tf, path, interpreter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NOTE: tf2onnx opens a (deprecated) tf.lite.Interpreter too
            proto, _ = tf2onnx.convert.from_tflite(os.fspath(path), opset=opset)
    except Exception as e:  # noqa: BLE001  # tf2onnx raises anything from struct.error to KeyError
        raise ConversionError(
            f"{where}: tf2onnx cannot convert the file: {type(e).__name__}: {first_line(e)}"
        ) from e
    model = ir.serde.deserialize_model(proto)
    renamed = _rename_io(model, aliases)
    renumber_generated_names(model)
    feeds = {renamed.get(k, k): v for k, v in arrays.items()}
    expected = {renamed.get(k, k): v for k, v in expected.items()}
    steps = {renamed.get(k, k): v for k, v in steps.items()}
    return finish(
        model,
        source_kind="tflite",
        source=where,
        feeds=feeds,
        expected=expected,
        requests=dims.parse_requests(dynamic),
        layout="nhwc",
        anonymous=ANONYMOUS_DIM,
        forget_other_anonymous=True,
        static_hint="the .tflite file fixes its size; convert the TF model with None in its input signature",
        optimize=optimize,
        rtol=rtol,
        atol=atol,
        reference="the TFLite interpreter",
        notes=[] if example_inputs else ["the numeric check used random inputs (seed 0)"],
        steps=steps,
    )


def _run_interpreter(
    interpreter: Any, aliases: Mapping[str, str], example_inputs: Mapping[str, np.ndarray] | None, where: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The check inputs and the interpreter's outputs, both by tensor name."""
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    given = dict(example_inputs or {})
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for detail in in_details:
        tensor_name = detail["name"]
        public = aliases.get(tensor_name, tensor_name)
        if public in given or tensor_name in given:
            arrays[tensor_name] = np.asarray(given.get(public, given.get(tensor_name)), dtype=detail["dtype"])
        else:
            signature = detail.get("shape_signature", detail["shape"])
            shape = [
                int(d) if d >= 0 else (BATCH_SIZE if i == 0 else OTHER_SIZE) for i, d in enumerate(signature)
            ]
            arrays[tensor_name] = random_array(
                shape, np.dtype(detail["dtype"]), rng, what=f"{where}: '{public}'"
            )
        if list(arrays[tensor_name].shape) != list(detail["shape"]):
            interpreter.resize_tensor_input(detail["index"], list(arrays[tensor_name].shape))
    try:
        interpreter.allocate_tensors()
        for detail in in_details:
            interpreter.set_tensor(detail["index"], arrays[detail["name"]])
        interpreter.invoke()
        expected = {d["name"]: np.array(interpreter.get_tensor(d["index"])) for d in out_details}
    except Exception as e:  # noqa: BLE001  # TFLite runtime errors
        raise ConversionError(
            f"{where}: the TFLite interpreter fails on the check inputs: {first_line(e)}"
        ) from e
    return arrays, expected


def _quantization_steps(tf: Any, path: Path, interpreter: Any) -> dict[str, float]:
    """Output tensor name -> quantization step, for the outputs of an integer model.

    An int8 / uint8 / int16 output is compared in its own integers (step 1); a float output that a
    DEQUANTIZE op produces, in the step of the tensor it dequantizes. Ops are read from an
    interpreter without the default delegates (XNNPACK hides them behind DELEGATE nodes).
    """
    steps: dict[str, float] = {}
    producers: dict[int, tuple[str, list[int]]] = {}
    tensors: dict[int, dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bare = tf.lite.Interpreter(model_path=os.fspath(path), experimental_op_resolver_type=(
                tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
            bare.allocate_tensors()
            for op in bare._get_ops_details():  # noqa: SLF001  # the only way to read the op list
                for out in op["outputs"]:
                    producers[int(out)] = (str(op["op_name"]), [int(i) for i in op["inputs"]])
            tensors = {int(t["index"]): t for t in bare.get_tensor_details()}
        except Exception:  # noqa: BLE001  # no op list: float tolerance for every output
            return {}
    for detail in interpreter.get_output_details():
        scale = float(detail["quantization"][0])
        if np.dtype(detail["dtype"]).kind in "iu" and scale > 0:
            steps[detail["name"]] = 1.0
            continue
        op = producers.get(int(detail["index"]))
        if op is not None and op[0] == "DEQUANTIZE" and op[1]:
            source = tensors.get(op[1][0])
            if source is not None and np.dtype(source["dtype"]).kind in "iu" and source["quantization"][0] > 0:
                steps[detail["name"]] = float(source["quantization"][0])
    return steps


def _signature_names(interpreter: Any) -> dict[str, str]:
    """Tensor name -> signature name for the inputs and outputs of a single-signature file."""
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        details: dict[str, Any] = {**runner.get_input_details(), **runner.get_output_details()}
    except (ValueError, RuntimeError, KeyError):
        return {}
    return {d["name"]: public for public, d in details.items()}


def _rename_io(model: ir.Model, aliases: Mapping[str, str]) -> dict[str, str]:
    """Renames graph inputs/outputs to their signature names where that stays unique."""
    taken: set[str] = {v.name for v in _values(model.graph) if v.name}
    renamed: dict[str, str] = {}
    for value in [*model.graph.inputs, *model.graph.outputs]:
        old = value.name or ""
        new = aliases.get(old)
        if new and new != old and new not in taken and old not in renamed:
            value.name = new
            taken.add(new)
            renamed[old] = new
    return renamed


def _values(graph: ir.Graph) -> list[ir.Value]:
    values: list[ir.Value] = [*graph.inputs, *graph.initializers.values()]
    for node in graph:
        values.extend(node.outputs)
    return values
