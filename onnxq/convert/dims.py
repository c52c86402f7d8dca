"""Readable names for the dynamic dimensions of converted models.

Exporters name dynamic dimensions with opaque symbols (torch: ``s77``, tf2onnx:
``unk__6``). People and tools refer to these names (``batch``), so conversion
renames them: first the names the user asked for (``x:0=batch``), then a default
chosen from the axis and the layout (``batch``, ``seq``, ``height``...). The
renaming covers every value of the model, symbolic expressions included
(``2*s77`` becomes ``2*batch``), so shapes stay consistent with each other.

A request is written ``INPUT=NAME`` (axis 0) or ``INPUT:AXIS=NAME``; TF tensor
names may themselves contain ``:``, so the key is resolved against the real
input names rather than split blindly.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal

import onnx_ir as ir

from onnxq.errors import ConversionError

logger = logging.getLogger(__name__)

Layout = Literal["nchw", "nhwc"]

_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LAYOUT_NAMES: dict[tuple[Layout, int], tuple[str, ...]] = {
    ("nchw", 4): ("batch", "channels", "height", "width"),
    ("nchw", 5): ("batch", "channels", "depth", "height", "width"),
    ("nhwc", 4): ("batch", "height", "width", "channels"),
    ("nhwc", 5): ("batch", "depth", "height", "width", "channels"),
}


@dataclasses.dataclass(frozen=True)
class DimRequest:
    """A user's request to make (or keep) one input dimension dynamic under a given name."""

    key: str
    name: str

    def __str__(self) -> str:
        return f"{self.key}={self.name}"

    def resolve(self, input_names: Sequence[str], *, where: str) -> tuple[str, int]:
        """The (input, axis) this request means, given the model's input names."""
        if self.key in input_names:
            return self.key, 0
        head, sep, tail = self.key.rpartition(":")
        if sep and head in input_names and re.fullmatch(r"\d+", tail):
            return head, int(tail)
        known = ", ".join(input_names) or "none"
        raise ConversionError(
            f"{where}: dynamic dim '{self}': no input named '{head if sep else self.key}' (inputs: {known})"
        )


def parse_requests(dynamic: Mapping[str, str] | Iterable[str] | None) -> list[DimRequest]:
    """Parses ``{"x:0": "batch"}`` or ``["x:0=batch", "y=batch"]`` into requests.

    Raises:
        ConversionError: A spec has no ``=`` or the name is not an identifier.
    """
    if dynamic is None:
        return []
    if isinstance(dynamic, Mapping):
        pairs = [(str(k), str(v)) for k, v in dynamic.items()]
    else:
        pairs = []
        for spec in dynamic:
            key, sep, name = spec.rpartition("=")
            if not sep or not key:
                raise ConversionError(f"dynamic dim '{spec}': expected INPUT=NAME or INPUT:AXIS=NAME")
            pairs.append((key, name))
    requests = []
    for key, name in pairs:
        if not _DIM_NAME.fullmatch(name):
            raise ConversionError(
                f"dynamic dim '{key}={name}': the name must be an identifier such as 'batch' or 'seq_len'"
            )
        requests.append(DimRequest(key, name))
    return requests


def default_name(axis: int, rank: int, layout: Layout) -> str:
    """A conventional name for a dynamic axis: ``batch``, ``seq``, ``height``... else ``dim<axis>``."""
    if (layout, rank) in _LAYOUT_NAMES:
        return _LAYOUT_NAMES[(layout, rank)][axis]
    if axis == 0:
        return "batch"
    if axis == 1 and rank in (2, 3):
        return "seq"
    return f"dim{axis}"


def name_dynamic_dims(
    model: ir.Model,
    requests: Sequence[DimRequest],
    *,
    where: str,
    layout: Layout,
    anonymous: str,
    forget_other_anonymous: bool = False,
    static_hint: str = "",
) -> dict[str, str]:
    """Renames the dynamic dimensions of the graph inputs, everywhere in the model.

    Args:
        model: The converted model; changed in place.
        requests: User names; each must point at a dynamic input dimension.
        where: The source, for error messages.
        layout: Picks default names for rank-4/5 inputs.
        anonymous: Regex of the exporter's own symbols; only these get default names
            (a name the user gave the exporter, e.g. ``torch.export.Dim("B")``, is kept).
        forget_other_anonymous: Turn anonymous symbols that are not input dims into unknown
            dims (tf2onnx numbers every unknown dim afresh, so they carry no information;
            shape inference then derives them from the named inputs).
        static_hint: Appended to the error for a request that names a static dimension.

    Returns:
        The renaming applied, old symbol -> new name.

    Raises:
        ConversionError: A request names a missing input, an axis out of range or a static
            dimension, gives one dimension two names, or one name to two dimensions that the
            exporter named itself (e.g. two different ``torch.export.Dim``).
    """
    anon = re.compile(anonymous)
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    names = [v.name or "" for v in inputs]
    by_name = {v.name: v for v in inputs}
    symbols = {
        d.value
        for v in _all_values(model)
        if v.shape is not None
        for d in v.shape.dims
        if isinstance(d, ir.SymbolicDim) and d.value
    }
    mapping: dict[str, str] = {}
    owner: dict[str, str] = {}  # new name -> the request that claimed it
    for request in requests:
        input_name, axis = request.resolve(names, where=where)
        shape = by_name[input_name].shape
        if shape is None or axis >= shape.rank():
            rank = "unknown" if shape is None else shape.rank()
            raise ConversionError(f"{where}: dynamic dim '{request}': input '{input_name}' has rank {rank}")
        dim = shape.dims[axis]
        if not isinstance(dim, ir.SymbolicDim) or not dim.value:
            raise ConversionError(
                f"{where}: dynamic dim '{request}': axis {axis} of '{input_name}' is static ({dim})"
                + (f"; {static_hint}" if static_hint else "")
            )
        old = dim.value
        if mapping.get(old, request.name) != request.name:
            raise ConversionError(
                f"{where}: dynamic dim '{request}': this dimension is already named '{mapping[old]}' "
                "(the exporter made them the same dimension)"
            )
        other = owner.get(request.name, old)
        if other != old and not (anon.fullmatch(other) and anon.fullmatch(old)):
            raise ConversionError(
                f"{where}: dynamic dim '{request}': '{request.name}' already names another dimension "
                f"('{other}'), which the exported model keeps apart; use different names"
            )
        # NOTE: two exporter-invented symbols under one name: the user declares the sizes equal
        # (tf2onnx numbers every unknown dim afresh, so this is the only way to tie TF batch axes).
        mapping[old] = request.name
        owner[request.name] = old
    for new, old in owner.items():
        if new in symbols and new != old and new not in mapping:
            raise ConversionError(
                f"{where}: dynamic dim name '{new}' is already used by another dimension of the model; "
                "choose another name"
            )
    taken = set(owner) | {s for s in symbols if s not in mapping and not anon.fullmatch(s)}
    for value in inputs:
        if value.shape is None:
            continue
        rank = value.shape.rank()
        for axis, dim in enumerate(value.shape.dims):
            if not isinstance(dim, ir.SymbolicDim) or not dim.value or dim.value in mapping:
                continue
            if not anon.fullmatch(dim.value):
                continue
            base = default_name(axis, rank, layout)
            new = _first_free([base, f"{value.name}_{base}"], base, taken)
            mapping[dim.value] = new
            taken.add(new)
    mapping = {old: new for old, new in mapping.items() if old != new}
    rename_symbols(model, mapping, forget=anon if forget_other_anonymous else None)
    if mapping:
        logger.info("renamed dynamic dims: %s", ", ".join(f"{k}->{v}" for k, v in mapping.items()))
    return mapping


def rename_symbols(
    model: ir.Model, mapping: Mapping[str, str], *, forget: re.Pattern[str] | None = None
) -> None:
    """Substitutes symbols in every shape of the model (whole words inside expressions too).

    Args:
        model: Changed in place.
        mapping: Old symbol -> new symbol.
        forget: Symbols fully matching this (after renaming) become unknown dims.
    """
    if not mapping and forget is None:
        return
    pattern = (
        re.compile(
            r"(?<![A-Za-z0-9_])("
            + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
            + r")(?![A-Za-z0-9_])"
        )
        if mapping
        else None
    )
    for value in _all_values(model):
        shape = value.shape
        if shape is None:
            continue
        dims: list[int | ir.SymbolicDim | None] = []
        changed = False
        for dim in shape.dims:
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                text = pattern.sub(lambda m: mapping[m.group(1)], dim.value) if pattern else dim.value
                if forget is not None and forget.fullmatch(text):
                    dims.append(None)
                    changed = True
                    continue
                if text != dim.value:
                    dims.append(ir.SymbolicDim(text))
                    changed = True
                    continue
            dims.append(dim)  # type: ignore[arg-type]
        if changed:
            denotations = [shape.get_denotation(i) for i in range(shape.rank())]
            value.shape = ir.Shape(dims, denotations=denotations)


def _first_free(candidates: Sequence[str], base: str, taken: set[str]) -> str:
    for candidate in candidates:
        if candidate not in taken and _DIM_NAME.fullmatch(candidate):
            return candidate
    return next(f"{base}_{i}" for i in range(2, 1_000_000) if f"{base}_{i}" not in taken)


def _all_values(model: ir.Model) -> Iterator[ir.Value]:
    seen: set[int] = set()

    def fresh(values: Iterable[ir.Value]) -> Iterator[ir.Value]:
        for value in values:
            if id(value) not in seen:
                seen.add(id(value))
                yield value

    for graph in model.graphs():
        yield from fresh(graph.inputs)
        yield from fresh(graph.initializers.values())
        for node in graph:
            yield from fresh(node.outputs)
        yield from fresh(graph.outputs)
    for function in model.functions.values():
        yield from fresh(function.inputs)
        for node in function:
            yield from fresh(node.outputs)
