"""PyTorch to ONNX: ``torch.onnx.export(dynamo=True)`` followed by onnxq's checks.

Two entry points: :func:`from_torch` takes an ``nn.Module`` and example inputs;
:func:`from_pt2` takes a file written by ``torch.export.save``, which loads in a
process that does not have the module's Python class. ``optimize=False`` exports the
raw graph (``torch.onnx.export(optimize=False)``): BatchNormalization and decomposed ops
such as LayerNorm and GELU stay, which is what onnxq's own ``optimize`` preset and its
tests start from. The exporter already
returns an ``onnx_ir.Model``, so no protobuf round trip is needed. Dynamic dims
the exporter calls ``s77`` are renamed to the user's names or to ``batch``/``seq``...

PyTorch is an optional extra (``onnxq[torch]``): it is imported inside the functions.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from collections.abc import Mapping
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

#: The dynamo exporter writes opset 18 natively; older opsets go through a lossy down-conversion.
MIN_OPSET = 18
#: ``torch.onnx._constants.ONNX_MAX_OPSET`` in torch 2.13.
MAX_OPSET = 23
#: Symbols the exporter invents for dynamic dims (``Dim.AUTO`` / ``Dim.DYNAMIC``).
_ANONYMOUS = r"s\d+"
_STATIC_HINT_PT2 = "the .pt2 file fixes its size; export it with a torch.export.Dim for that axis"
_STATIC_HINT_MODULE = "mark it with a torch.export.Dim in dynamic_shapes"


def from_torch(
    module: Any,
    example_inputs: tuple[Any, ...],
    *,
    dynamic_shapes: Any = None,
    dim_names: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts an ``nn.Module`` to a checked ONNX model.

    Args:
        module: The module; it runs in eval mode during export (its mode is restored after).
        example_inputs: Positional inputs of ``forward``; also the inputs of the numeric check.
        dynamic_shapes: Passed to ``torch.onnx.export`` as is (``torch.export.Dim`` names are kept).
        dim_names: ``{"x": "batch", "x:1": "seq"}``: input (axis 0) or input:axis -> name. Without
            ``dynamic_shapes`` these axes are made dynamic (one ``torch.export.Dim`` per name, so one
            name on two inputs means the same size); with it, they only rename dynamic axes.
        opset: ONNX opset, 18 to 23.
        optimize: ``None`` (default): the exporter's own optimizer runs (BatchNorm folded...);
            ``True``: that, then onnxq's ``cleanup`` pipeline; ``False``: the raw export, with the
            exporter's optimizer off (BatchNorm and decomposed ops kept).
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: PyTorch is not installed.
        ConversionError: Export failed, or the result is invalid or computes something else.
    """
    where = f"torch module '{type(module).__name__}'"
    torch = import_extra("torch", purpose=f"{where}: converting a PyTorch module")
    check_opset(opset, low=MIN_OPSET, high=MAX_OPSET, where=where, converter="torch.onnx (dynamo)")
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"{where}: expected a torch.nn.Module")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise ConversionError(f"{where}: example_inputs must be a tuple of forward's positional inputs")
    requests = dims.parse_requests(dim_names)
    if dynamic_shapes is None and requests:
        dynamic_shapes = _dynamic_shapes(torch, module, example_inputs, requests, where)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(*_clone(torch, example_inputs))
        program = _export(torch, module, example_inputs, {}, dynamic_shapes, opset, where, raw=optimize is False)
    finally:
        module.train(was_training)
    return _finish(
        torch,
        program.model,
        example_inputs,
        {},
        expected,
        source_kind="torch",
        where=where,
        requests=requests,
        static_hint=_STATIC_HINT_MODULE,
        optimize=bool(optimize),
        rtol=rtol,
        atol=atol,
        notes=_raw_note(optimize),
    )


def from_pt2(
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic: Mapping[str, str] | None = None,
    optimize: bool | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ConversionResult:
    """Converts a ``torch.export.save`` file (.pt2) to a checked ONNX model.

    The numeric check runs on the example inputs stored in the file; when there are
    none, on seeded random inputs built from the program's input specs (noted in the
    result).

    Args:
        path: The .pt2 file.
        opset: ONNX opset, 18 to 23.
        dynamic: ``{"x": "batch", "x:1": "seq"}``: names for axes that are dynamic in the
            program (a .pt2 program's static axes cannot be made dynamic afterwards).
        optimize: As for :func:`from_torch`: ``None`` the exporter's optimizer, ``True`` that and
            ``cleanup``, ``False`` the raw export.
        rtol: Relative tolerance of the numeric check.
        atol: Absolute tolerance of the numeric check.

    Raises:
        MissingExtraError: PyTorch is not installed.
        ModelLoadError: The file is missing or is not a torch.export program.
        ConversionError: Export failed, or the result is invalid or computes something else.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise ModelLoadError(f"{where}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{where}: is a folder, expected a .pt2 file written by torch.export.save")
    torch = import_extra("torch", purpose=f"{where}: converting a .pt2 file")
    check_opset(opset, low=MIN_OPSET, high=MAX_OPSET, where=where, converter="torch.onnx (dynamo)")
    requests = dims.parse_requests(dynamic)
    try:
        program = torch.export.load(path)
    except Exception as e:  # noqa: BLE001  # torch raises assorted types for foreign or corrupt files
        raise ModelLoadError(
            f"{where}: cannot load as a torch.export program (.pt2): {type(e).__name__}: {first_line(e)}"
        ) from e
    notes = _raw_note(optimize)
    if program.example_inputs is not None:
        args, kwargs = program.example_inputs
    else:
        args, kwargs = _random_inputs(torch, program, where), {}
        notes.append("the .pt2 file stores no example inputs; the numeric check used random inputs (seed 0)")
        logger.warning("%s: %s", where, notes[-1])
    try:
        with torch.no_grad():
            expected = program.module()(*_clone(torch, args), **_clone(torch, kwargs))
    except Exception as e:  # noqa: BLE001  # the program's own failure on its inputs
        raise ConversionError(f"{where}: the program fails on its example inputs: {first_line(e)}") from e
    onnx_program = _export(torch, program, tuple(args), dict(kwargs), None, opset, where, raw=optimize is False)
    return _finish(
        torch,
        onnx_program.model,
        tuple(args),
        dict(kwargs),
        expected,
        source_kind="pt2",
        where=where,
        requests=requests,
        static_hint=_STATIC_HINT_PT2,
        optimize=bool(optimize),
        rtol=rtol,
        atol=atol,
        notes=notes,
    )


def _export(
    torch: ModuleType,
    model: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dynamic_shapes: Any,
    opset: int,
    where: str,
    *,
    raw: bool = False,
) -> Any:
    # NOTE: artifacts_dir is a temp folder so a failing export leaves nothing beside the user's files.
    with tempfile.TemporaryDirectory(prefix="onnxq-torch-") as artifacts:
        try:
            return torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                optimize=not raw,
                verbose=False,
                report=False,
                artifacts_dir=artifacts,
            )
        except Exception as e:  # noqa: BLE001  # the exporter wraps many failure types
            raise ConversionError(f"{where}: torch.onnx.export failed: {_root_cause(e)}") from e


def _finish(
    torch: ModuleType,
    model: ir.Model,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    expected: Any,
    *,
    source_kind: str,
    where: str,
    requests: list[dims.DimRequest],
    static_hint: str,
    optimize: bool,
    rtol: float,
    atol: float,
    notes: list[str],
) -> ConversionResult:
    leaves = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    if len(leaves) != len(inputs):
        raise ConversionError(
            f"{where}: the converted model has {len(inputs)} inputs but the example inputs hold "
            f"{len(leaves)} tensors"
        )
    feeds = {v.name or "": _numpy(t, where) for v, t in zip(inputs, leaves, strict=True)}
    outputs = [
        _numpy(t, where) for t in torch.utils._pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)
    ]
    return finish(
        model,
        source_kind=source_kind,
        source=where,
        feeds=feeds,
        expected=outputs,
        requests=requests,
        layout="nchw",
        anonymous=_ANONYMOUS,
        static_hint=static_hint,
        optimize=optimize,
        rtol=rtol,
        atol=atol,
        reference="PyTorch",
        notes=notes,
    )


def _raw_note(optimize: bool | None) -> list[str]:
    if optimize is False:
        return ["raw export (optimize=False): the exporter's optimizer did not run; BatchNorm and decomposed ops kept"]
    return []


def _dynamic_shapes(
    torch: ModuleType, module: Any, args: tuple[Any, ...], requests: list[dims.DimRequest], where: str
) -> tuple[dict[int, Any] | None, ...]:
    """One ``torch.export.Dim`` per requested name, placed by forward's parameter names."""
    params = list(inspect.signature(module.forward).parameters.values())
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][: len(args)]
    shapes: list[dict[int, Any] | None] = [None] * len(args)
    by_name: dict[str, Any] = {}
    for request in requests:
        name, axis = request.resolve(names, where=where)
        index = names.index(name)
        arg = args[index]
        if not isinstance(arg, torch.Tensor):
            raise ConversionError(f"{where}: dynamic dim '{request}': input '{name}' is not a tensor")
        if axis >= arg.dim():
            raise ConversionError(f"{where}: dynamic dim '{request}': input '{name}' has rank {arg.dim()}")
        dim = by_name.setdefault(request.name, torch.export.Dim(request.name))
        shapes[index] = {**(shapes[index] or {}), axis: dim}
    return tuple(shapes)


def _random_inputs(torch: ModuleType, program: Any, where: str) -> tuple[Any, ...]:
    """Seeded inputs from the user-input placeholders of an ExportedProgram without example inputs."""
    rng = np.random.default_rng(0)
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    args = []
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", None)
        if name not in user_inputs:
            continue
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ConversionError(
                f"{where}: input '{name}' is not a tensor and the file stores no example inputs; "
                "save the program with its example inputs"
            )
        shape = [_concrete(d, program) for d in val.shape]
        dtype = torch.empty((), dtype=val.dtype).numpy().dtype
        args.append(torch.from_numpy(random_array(shape, dtype, rng, what=f"{where}: input '{name}'")))
    return tuple(args)


def _concrete(dim: Any, program: Any) -> int:
    if isinstance(dim, int):
        return dim
    hint = getattr(getattr(dim, "node", None), "hint", None)
    if hint is not None:
        return int(hint)
    ranges = program.range_constraints.get(getattr(dim.node, "expr", None))
    low = int(ranges.lower) if ranges is not None else 2
    return max(low, 2)


def _clone(torch: ModuleType, tree: Any) -> Any:
    # NOTE: forward may modify its inputs in place; the export must see the originals.
    return torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _numpy(tensor: Any, where: str) -> np.ndarray:
    try:
        return tensor.detach().cpu().numpy()  # type: ignore[no-any-return]
    except TypeError as e:
        raise ConversionError(
            f"{where}: cannot compare tensors of type {tensor.dtype}: {first_line(e)}"
        ) from e


def _root_cause(e: BaseException) -> str:
    inner = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    return f"{type(inner).__name__}: {first_line(inner)}"
