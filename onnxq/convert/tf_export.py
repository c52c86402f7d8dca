"""TensorFlow, Keras and TFLite to ONNX via tf2onnx, followed by onnxq's checks.

Routes (each ends in :func:`onnxq.convert.common.finish`):

- SavedModel folder: ``tf.saved_model.load``; its serving signature, wrapped in a
  ``tf.function``, goes to ``tf2onnx.convert.from_function``.
- ``.keras`` / ``.h5``: ``keras.models.load_model(compile=False)`` (safe mode: no
  arbitrary code from the file), then ``from_function`` on a ``tf.function`` that
  calls the model. ``tf2onnx.convert.from_keras`` is not used: it fails on Keras 3
  (``KeyError: 'keras_tensor_N'``). Outputs keep the Keras output names.
- ``.tflite``: see :mod:`onnxq.convert.tflite_export`.

Without example inputs the numeric check uses seeded random inputs; dynamic dims
get size 2 on axis 0 and 8 elsewhere. tf2onnx supports opsets up to 18.
TensorFlow and tf2onnx are an optional extra (``onnxq[tf]``), imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
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
    import_extra,
    random_array,
)
from onnxq.errors import ConversionError, ModelLoadError

logger = logging.getLogger(__name__)

#: tf2onnx 1.17 emits opsets 13 to 18 reliably (``tf2onnx.constants.OPSET_TO_IR_VERSION`` ends at 18).
MIN_OPSET = 13
MAX_OPSET = 18
#: Sizes of dynamic dims in random check inputs.
BATCH_SIZE = 2
OTHER_SIZE = 8
#: tf2onnx names every unknown dim ``unk__N`` afresh.
ANONYMOUS_DIM = r"unk__\d+"
CONVERTER = "tf2onnx"


def from_saved_model(
    path: str | os.PathLike[str],
    *,
    signature: str = "serving_default",
    opset: int = DEFAULT_OPSET,
    dynamic: Mapping[str, str] | None = None,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    optimize: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts a TF2 SavedModel folder (e.g. from Keras ``model.export(dir)``).

    Args:
        path: The folder holding ``saved_model.pb``.
        signature: The signature to convert.
        opset: ONNX opset, 13 to 18.
        dynamic: ``{"x": "batch", "x:1": "seq"}``: names for axes the signature leaves
            unknown (``None``); the signature fixes the others.
        example_inputs: Check inputs by input name; seeded random inputs when omitted.
        optimize: Run onnxq's ``cleanup`` pipeline on the result.
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: TensorFlow or tf2onnx is not installed.
        ModelLoadError: The folder is not a loadable SavedModel.
        ConversionError: Conversion failed, or the result is invalid or computes something else.
    """
    path = Path(path)
    where = str(path)
    if not path.is_dir() or not (
        (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    ):
        raise ModelLoadError(f"{where}: not a SavedModel folder (no saved_model.pb)")
    tf, tf2onnx = import_tf(f"{where}: converting a SavedModel")
    check_opset(opset, low=MIN_OPSET, high=MAX_OPSET, where=where, converter=CONVERTER)
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except Exception as e:  # noqa: BLE001  # TF raises many types for corrupt folders
        raise ModelLoadError(
            f"{where}: cannot load the SavedModel: {type(e).__name__}: {first_line(e)}"
        ) from e
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature not in signatures:
        known = ", ".join(signatures) or "none"
        raise ConversionError(f"{where}: the SavedModel has no signature '{signature}' (signatures: {known})")
    concrete = signatures[signature]
    _, kwargs_spec = concrete.structured_input_signature
    names = list(kwargs_spec)
    specs = [tf.TensorSpec(kwargs_spec[n].shape, kwargs_spec[n].dtype, name=n) for n in names]

    def call(*args: Any) -> Any:
        return concrete(**dict(zip(names, args, strict=True)))

    fn = tf.function(call, input_signature=specs, autograph=False)
    return _convert_function(
        tf,
        tf2onnx,
        fn,
        specs,
        where=where,
        source_kind="saved_model",
        opset=opset,
        requests=dims.parse_requests(dynamic),
        static_hint="the SavedModel signature fixes its size; export it with None in the input signature",
        example_inputs=example_inputs,
        optimize=optimize,
        rtol=rtol,
        atol=atol,
    )


def from_keras(
    model: str | os.PathLike[str] | Any,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: Mapping[str, str] | None = None,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    optimize: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts a Keras model: a ``.keras`` / ``.h5`` file or a ``keras.Model`` object.

    Args:
        model: The file, or a built Keras model with defined inputs.
        opset: ONNX opset, 13 to 18.
        dynamic: ``{"x": "batch", "x:1": "seq"}``: these axes become ``None`` in the input
            signature (dynamic) and get these names.
        example_inputs: Check inputs by input name; seeded random inputs when omitted.
        optimize: Run onnxq's ``cleanup`` pipeline on the result.
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: TensorFlow, Keras or tf2onnx is not installed.
        ModelLoadError: The file cannot be loaded as a Keras model.
        ConversionError: Conversion failed, or the result is invalid or computes something else.
    """
    is_file = isinstance(model, (str, os.PathLike))
    where = str(model) if is_file else f"keras model '{getattr(model, 'name', type(model).__name__)}'"
    if is_file:
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{where}: no such file" if not path.exists() else f"{where}: is not a file")
    tf, tf2onnx = import_tf(f"{where}: converting a Keras model")
    keras = import_extra("keras", purpose=f"{where}: converting a Keras model")
    check_opset(opset, low=MIN_OPSET, high=MAX_OPSET, where=where, converter=CONVERTER)
    source_kind = "keras"
    keras_model: Any = model
    if is_file:
        source_kind = "h5" if Path(model).suffix.lower() in (".h5", ".hdf5") else "keras"
        try:
            keras_model = keras.models.load_model(os.fspath(model), compile=False, safe_mode=True)
        except Exception as e:  # noqa: BLE001  # Keras raises many types for unreadable files
            raise ModelLoadError(
                f"{where}: cannot load as a Keras model: {type(e).__name__}: {first_line(e)}"
            ) from e
    try:
        keras_inputs = list(keras_model.inputs)
    except (AttributeError, ValueError, TypeError):
        keras_inputs = []
    if not keras_inputs:
        raise ConversionError(
            f"{where}: the Keras model has no defined inputs (subclassed or unbuilt); build it on keras.Input"
        )
    names = [str(t.name) for t in keras_inputs]
    shapes = [list(t.shape) for t in keras_inputs]
    for request in dims.parse_requests(dynamic):
        name, axis = request.resolve(names, where=where)
        shape = shapes[names.index(name)]
        if axis >= len(shape):
            raise ConversionError(f"{where}: dynamic dim '{request}': input '{name}' has rank {len(shape)}")
        shape[axis] = None
    specs = [
        tf.TensorSpec(shape, tf.as_dtype(t.dtype), name=n)
        for n, shape, t in zip(names, shapes, keras_inputs, strict=True)
    ]
    output_names = _keras_output_names(keras_model)
    single = len(specs) == 1

    def call(*args: Any) -> dict[str, Any]:
        out = keras_model(args[0] if single else list(args), training=False)
        if isinstance(out, Mapping):
            return dict(out)
        flat = list(out) if isinstance(out, (list, tuple)) else [out]
        keys = output_names if len(output_names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
        return dict(zip(keys, flat, strict=True))

    fn = tf.function(call, input_signature=specs, autograph=False)
    return _convert_function(
        tf,
        tf2onnx,
        fn,
        specs,
        where=where,
        source_kind=source_kind,
        opset=opset,
        requests=dims.parse_requests(dynamic),
        static_hint="",
        example_inputs=example_inputs,
        optimize=optimize,
        rtol=rtol,
        atol=atol,
    )


def _convert_function(
    tf: ModuleType,
    tf2onnx: ModuleType,
    fn: Any,
    specs: Sequence[Any],
    *,
    where: str,
    source_kind: str,
    opset: int,
    requests: list[dims.DimRequest],
    static_hint: str,
    example_inputs: Mapping[str, np.ndarray] | None,
    optimize: bool,
    rtol: float,
    atol: float,
) -> ConversionResult:
    """tf2onnx on a ``tf.function`` returning a dict of outputs, then the checks."""
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=list(specs), opset=opset)
    except Exception as e:  # noqa: BLE001  # tf2onnx and TF tracing raise anything
        raise ConversionError(
            f"{where}: tf2onnx cannot convert the model: {type(e).__name__}: {first_line(e)}"
        ) from e
    model = ir.serde.deserialize_model(proto)
    renumber_generated_names(model)
    arrays = _check_inputs(specs, example_inputs, where)
    try:
        out = fn(*[tf.constant(a) for a in arrays])
    except Exception as e:  # noqa: BLE001  # the model's own failure on the check inputs
        raise ConversionError(f"{where}: TensorFlow fails on the check inputs: {first_line(e)}") from e
    outputs = {str(k): np.asarray(v.numpy()) for k, v in out.items()}
    onnx_inputs = [v.name or "" for v in model.graph.inputs if v.name not in model.graph.initializers]
    if len(onnx_inputs) != len(specs):
        raise ConversionError(
            f"{where}: the converted model has {len(onnx_inputs)} inputs, the source {len(specs)}"
        )
    feeds = dict(zip(onnx_inputs, arrays, strict=True))
    onnx_outputs = {v.name for v in model.graph.outputs}
    # NOTE: tf2onnx names outputs after the dict keys; otherwise they follow tf.nest order (sorted keys).
    expected: Mapping[str, np.ndarray] | list[np.ndarray] = (
        outputs if onnx_outputs == set(outputs) else [outputs[k] for k in sorted(outputs)]
    )
    return finish(
        model,
        source_kind=source_kind,
        source=where,
        feeds=feeds,
        expected=expected,
        requests=requests,
        layout="nhwc",
        anonymous=ANONYMOUS_DIM,
        forget_other_anonymous=True,
        static_hint=static_hint,
        optimize=optimize,
        rtol=rtol,
        atol=atol,
        reference="TensorFlow",
        notes=[] if example_inputs else ["the numeric check used random inputs (seed 0)"],
    )


def _check_inputs(
    specs: Sequence[Any], example_inputs: Mapping[str, np.ndarray] | None, where: str
) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        if example_inputs is not None:
            if spec.name not in example_inputs:
                raise ConversionError(f"{where}: example_inputs has no input '{spec.name}'")
            arrays.append(np.asarray(example_inputs[spec.name], dtype=spec.dtype.as_numpy_dtype))
            continue
        if spec.shape.rank is None:
            raise ConversionError(f"{where}: input '{spec.name}' has unknown rank; pass example inputs")
        shape = [
            d if d is not None else (BATCH_SIZE if i == 0 else OTHER_SIZE) for i, d in enumerate(spec.shape)
        ]
        arrays.append(
            random_array(shape, np.dtype(spec.dtype.as_numpy_dtype), rng, what=f"{where}: '{spec.name}'")
        )
    return arrays


def import_tf(purpose: str) -> tuple[ModuleType, ModuleType]:
    """TensorFlow and tf2onnx (with ``tf2onnx.convert``), or MissingExtraError naming ``onnxq[tf]``."""
    tf = import_extra("tensorflow", purpose=purpose)
    tf2onnx = import_extra("tf2onnx", purpose=purpose)
    import_extra("tf2onnx.convert", purpose=purpose)
    return tf, tf2onnx


def _keras_output_names(model: Any) -> list[str]:
    names = getattr(model, "output_names", None)
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else []


_GENERATED = re.compile(r"^(.*?)__(\d+)(.*)$")


def renumber_generated_names(model: ir.Model) -> int:
    """Renumbers tf2onnx's counter-made names (``const_fold_opt__105``) in order of appearance.

    tf2onnx numbers the names it makes from a process-wide counter, so the same model
    converts to different bytes from run to run; renumbering makes the output deterministic.
    Graph inputs and outputs keep their names. Returns how many names changed.
    """
    keep = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    if model.graph.doc_string:
        # "converted from b'__inference_call_115'": the traced function's counter too.
        model.graph.doc_string = re.sub(r"(__inference_\w*?)_\d+", r"\1", model.graph.doc_string)
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    # NOTE: tf2onnx also orders initializers differently from run to run: number (and
    # store) them in order of first use, which follows the deterministic node order.
    initializers = model.graph.initializers
    ordered: dict[int, ir.Value] = {}
    for node in nodes:
        for value in node.inputs:
            if value is not None and value.is_initializer() and value.name in initializers:
                ordered.setdefault(id(value), value)
    unused = sorted((v for v in initializers.values() if id(v) not in ordered), key=lambda v: v.name or "")
    values: list[Any] = [*ordered.values(), *unused]
    values += [v for n in nodes for v in n.outputs]
    changed = _renumber([v for v in values if v.name not in keep]) + _renumber(nodes)
    order = [*ordered.values(), *unused]
    initializers.clear()
    for value in order:
        initializers[value.name] = value  # type: ignore[index]
    return changed


def _renumber(items: Sequence[Any]) -> int:
    taken = {item.name for item in items}
    counters: dict[tuple[str, str], int] = {}
    changed = 0
    for item in items:
        match = _GENERATED.match(item.name or "")
        if match is None:
            continue
        prefix, suffix = match.group(1), match.group(3)
        index = counters.get((prefix, suffix), 0)
        while (new := f"{prefix}__g{index}{suffix}") in taken:
            index += 1
        counters[(prefix, suffix)] = index + 1
        taken.add(new)
        changed += new != item.name
        item.name = new
    return changed
