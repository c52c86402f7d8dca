"""Export step of the zoo: one small function per route, returning an ``onnx_ir.Model``.

Each function uses ``onnxq.convert`` when it provides the route (so the zoo exercises
our own converter) and otherwise falls back to the underlying library directly
(``torch.onnx.export(dynamo=True)`` / tf2onnx). ``Exported.converter`` records which
one ran; build.py writes it into the manifest.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

logger = logging.getLogger(__name__)

OPSET = 18


@dataclass
class Exported:
    """A converted model and the function that converted it."""

    model: ir.Model
    converter: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _onnxq_converter(name: str) -> Callable[..., Any] | None:
    """Returns ``onnxq.convert.<name>`` when the conversion module provides it."""
    try:
        module = importlib.import_module("onnxq.convert")
    except ImportError:
        return None
    return getattr(module, name, None)


def _from_result(result: Any, converter: str) -> Exported:
    diff = getattr(result, "max_abs_diff", None) or {}
    return Exported(result.model, converter, {str(k): float(v) for k, v in dict(diff).items()})


def export_torch(
    module: Any,
    example_inputs: tuple[Any, ...],
    *,
    dynamic_shapes: dict[str, Any] | None = None,
    output_names: Sequence[str] = (),
    keep_batchnorm: bool = False,
) -> Exported:
    """Exports a ``torch.nn.Module`` at opset 18; ``dynamic_shapes`` uses named ``torch.export.Dim``.

    Args:
        keep_batchnorm: Keep ``BatchNormalization`` nodes. torch.onnx's default optimizer
            (which ``onnxq.convert.from_torch`` runs) folds them into the Convs; with this
            flag the exporter runs with ``optimize=False`` and only onnxscript's constant
            folding cleans up, as older exporters and other frameworks leave BN in place.
    """
    from_torch = _onnxq_converter("from_torch")
    start = time.perf_counter()
    if keep_batchnorm:
        exported = _export_torch_unfused(module, example_inputs, dynamic_shapes)
    elif from_torch is not None:
        exported = _from_result(
            from_torch(module, example_inputs, dynamic_shapes=dynamic_shapes, opset=OPSET),
            "onnxq.convert.from_torch",
        )
    else:
        import torch

        logger.info("onnxq.convert.from_torch not available; using torch.onnx.export(dynamo=True)")
        program = torch.onnx.export(
            module,
            example_inputs,
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
        assert program is not None
        exported = Exported(program.model, "torch.onnx.export(dynamo=True)")
    logger.info(
        "exported %s with %s in %.1f s",
        type(module).__name__,
        exported.converter,
        time.perf_counter() - start,
    )
    rename_outputs(exported.model, output_names)
    return exported


def _export_torch_unfused(
    module: Any, example_inputs: tuple[Any, ...], dynamic_shapes: dict[str, Any] | None
) -> Exported:
    import onnxscript.optimizer
    import torch
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    program = torch.onnx.export(
        module,
        example_inputs,
        dynamo=True,
        opset_version=OPSET,
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=False,
        verbose=False,
    )
    assert program is not None
    onnxscript.optimizer.fold_constants(program.model)
    RemoveUnusedNodesPass()(program.model)
    return Exported(
        program.model, "torch.onnx.export(dynamo=True, optimize=False) + onnxscript fold_constants"
    )


def export_saved_model(
    saved_model_dir: str | os.PathLike[str], *, output_names: Sequence[str] = ()
) -> Exported:
    """Converts a TensorFlow SavedModel (e.g. written by Keras 3 ``model.export``) with tf2onnx."""
    from_saved_model = _onnxq_converter("from_saved_model")
    if from_saved_model is not None:
        exported = _from_result(
            from_saved_model(os.fspath(saved_model_dir)), "onnxq.convert.from_saved_model"
        )
    else:
        from tf2onnx import convert, tf_loader

        logger.info("onnxq.convert.from_saved_model not available; using tf2onnx directly")
        graph_def, inputs, outputs, tensors_to_rename = tf_loader.from_saved_model(
            os.fspath(saved_model_dir), None, None, return_tensors_to_rename=True
        )
        proto, _ = convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            opset=OPSET,
            tensors_to_rename=tensors_to_rename,
        )
        exported = Exported(ir.serde.deserialize_model(proto), "tf2onnx (SavedModel graph_def)")
    rename_outputs(exported.model, output_names)
    return exported


def export_tflite(tflite_path: str | os.PathLike[str], *, output_names: Sequence[str] = ()) -> Exported:
    """Converts a .tflite flatbuffer with tf2onnx."""
    from_tflite = _onnxq_converter("from_tflite")
    if from_tflite is not None:
        exported = _from_result(from_tflite(os.fspath(tflite_path)), "onnxq.convert.from_tflite")
    else:
        from tf2onnx import convert

        logger.info("onnxq.convert.from_tflite not available; using tf2onnx directly")
        proto, _ = convert.from_tflite(os.fspath(Path(tflite_path)), opset=OPSET)
        exported = Exported(ir.serde.deserialize_model(proto), "tf2onnx.convert.from_tflite")
    rename_outputs(exported.model, output_names)
    return exported


def rename_outputs(model: ir.Model, names: Sequence[str]) -> None:
    """Gives graph outputs readable names (exporters produce names like ``linear_3``)."""
    if not names:
        return
    if len(names) != len(model.graph.outputs):
        raise ValueError(f"{len(names)} output names for {len(model.graph.outputs)} outputs")
    taken = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        taken.update(v.name for v in node.outputs)
    for value, name in zip(model.graph.outputs, names, strict=True):
        if value.name == name:
            continue
        if name in taken:
            raise ValueError(f"cannot rename output {value.name!r} to {name!r}: the name is taken")
        value.name = name


def export_torch_legacy(
    module: Any,
    example_inputs: tuple[Any, ...],
    *,
    opset: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
) -> Exported:
    """Exports with the legacy TorchScript exporter (``torch.onnx.export(dynamo=False)``).

    As older tools and tutorials do: ``dynamic_axes`` in list form (the exporter names the
    dims itself, ``input_dynamic_axes_1``), constant folding on, BatchNorm folded in eval
    mode, no onnxq clean-up afterwards, so the file is what a legacy export really holds.
    """
    import io
    import warnings

    import onnx
    import torch

    buffer = io.BytesIO()
    axes = {name: [0] for name in (*input_names, *output_names)} if dynamic_batch else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        # NOTE: torch warns that dynamo=False is deprecated; that is the point here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            buffer,  # type: ignore[arg-type]  # NOTE: the legacy exporter writes file objects too
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    logger.info(
        "exported %s with the legacy exporter in %.1f s", type(module).__name__, time.perf_counter() - start
    )
    return Exported(
        ir.serde.deserialize_model(proto), f"torch.onnx.export(dynamo=False, opset_version={opset})"
    )


def export_tf_function(fn: Any, input_signature: Sequence[Any], *, opset: int) -> Exported:
    """tf2onnx ``from_function`` at any opset it supports (``onnxq.convert`` accepts 13-18 only).

    tf2onnx's counter-made names are renumbered with onnxq's helper so the file is
    byte-for-byte reproducible; dims stay as tf2onnx writes them (``unk__N``).
    """
    import onnx
    from tf2onnx import convert

    from onnxq.convert.tf_export import renumber_generated_names

    proto, _ = convert.from_function(fn, input_signature=list(input_signature), opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)
    renumber_generated_names(model)
    _renumber_unknown_dims(model)
    return Exported(model, f"tf2onnx.convert.from_function(opset={opset})")


def _renumber_unknown_dims(model: ir.Model) -> None:
    """``unk__152`` -> ``unk__0``...: tf2onnx numbers unknown dims from a process-wide counter."""
    import re

    values = [*model.graph.inputs, *(v for node in model.graph for v in node.outputs), *model.graph.outputs]
    # NOTE: each value once (graph outputs are node outputs too), names mapped before any is
    # rewritten, so a new name never meets an old one that happens to be spelled the same
    unique = list({id(v): v for v in values if v.shape is not None}.values())
    mapping: dict[str, str] = {}
    for value in unique:
        for dim in value.shape or ():
            if isinstance(dim, ir.SymbolicDim) and dim.value and re.fullmatch(r"unk__\d+", dim.value):
                mapping.setdefault(dim.value, f"unk__{len(mapping)}")
    for value in unique:
        dims = [
            mapping.get(dim.value, dim) if isinstance(dim, ir.SymbolicDim) and dim.value else dim
            for dim in value.shape or ()
        ]
        value.shape = ir.Shape(dims)
