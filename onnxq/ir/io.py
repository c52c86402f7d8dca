"""Safe model I/O on onnx_ir: lazy loading with checked external data, atomic saving.

Rules (see README): the input file is never modified; output goes to a temporary
folder beside the target and is renamed into place (model and external data
alike), so a crash leaves the previous output intact; external-data references
must stay inside the model's folder. onnx_ir maps external data lazily, which
keeps peak memory low on multi-GB models.

A model and its external data are replaced as one pair, with only the model's
rename as the switch: the new data goes in under a name the previous model does
not read (``<name>.data``; when the previous model reads that file and it holds
other bytes, ``<name>.<content hash>.data``, so the name stays deterministic), and
the data files the previous model used are removed only after the new model is in
place (only files named that way: a shared ``weights.bin`` is never touched). Two
renames cannot be atomic together; this way no moment pairs a model with data
that is not its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxq.errors import ExternalDataError, ModelLoadError, ModelSaveError, first_line
from onnxq.ir import structure

#: Models whose tensors add up to more than this are saved with external data.
PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 1024**2
#: Key in ``model.meta`` (not serialized) holding the file a model was loaded from.
SOURCE_PATH_KEY = "onnxq.source_path"


def load_model(path: str | os.PathLike[str], *, check: bool = True) -> ir.Model:
    """Loads an ONNX file into an ``onnx_ir.Model``; external data stays on disk until read.

    Args:
        path: The .onnx file.
        check: Also validate the structure (opset imports, domains, cycles, undefined values).

    Raises:
        ModelLoadError: The file is missing, empty, truncated, not ONNX, or malformed.
        ExternalDataError: An external-data reference escapes the model's folder or its file.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (cannot parse protobuf: {first_line(e)})"
        ) from None
    if not proto.HasField("graph"):
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph; truncated or another format?)")
    check_external_data_proto(proto, path)
    serde_log = logging.getLogger("onnx_ir.serde")
    level = serde_log.level
    # NOTE: onnx_ir warns about undefined names; check_structure reports them as one-line errors.
    serde_log.setLevel(logging.ERROR)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # noqa: BLE001  # onnx_ir raises assorted types on malformed protos
        raise ModelLoadError(f"{path}: malformed model: {first_line(e)}") from None
    finally:
        serde_log.setLevel(level)
    # NOTE: the folder the checks used (symlinks resolved), and every tensor: onnx_ir's
    # set_base_dir does not reach model-local functions.
    base_dir = os.fspath(path.resolve().parent)
    for tensor, _, _ in _all_tensor_slots(model):
        if isinstance(tensor, ir.ExternalTensor):
            tensor.base_dir = base_dir
    model.meta[SOURCE_PATH_KEY] = os.fspath(path.resolve())
    if check:
        structure.check_structure(model, where=os.fspath(path))
    return model


def check_external_data_proto(proto: onnx.ModelProto, path: Path) -> None:
    """Rejects external-data references that are unsafe or do not fit their file.

    A location must be relative, without ``..``, name a regular file inside the
    model's folder that is neither a symlink nor a hardlink, and ``offset + length``
    must lie within it.
    """
    base = path.resolve().parent
    for tensor, where in external_tensors(proto):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        prefix = f"{path}: {where} '{tensor.name}'"
        if not location:
            raise ExternalDataError(f"{prefix}: external data has no location")
        loc = Path(location)
        if loc.is_absolute() or location.startswith(("/", "\\")) or ":" in location:
            raise ExternalDataError(f"{prefix}: external data location '{location}' is absolute")
        if ".." in loc.parts or "\\" in location:
            raise ExternalDataError(
                f"{prefix}: external data location '{location}' leaves the model folder"
            )
        target = base / loc
        for parent in [target, *target.parents]:
            if parent == base:
                break
            if parent.is_symlink():
                raise ExternalDataError(
                    f"{prefix}: external data location '{location}' is a symlink; copy the file instead"
                )
        if not target.is_file():
            raise ExternalDataError(f"{prefix}: external data file '{location}' not found")
        if not target.resolve().is_relative_to(base):
            raise ExternalDataError(
                f"{prefix}: external data location '{location}' leaves the model folder"
            )
        st = target.stat()
        if st.st_nlink > 1:
            raise ExternalDataError(
                f"{prefix}: external data file '{location}' is a hardlink; copy the file instead"
            )
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else st.st_size - offset
        except ValueError:
            raise ExternalDataError(f"{prefix}: external data offset/length is not a number") from None
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise ExternalDataError(
                f"{prefix}: external data offset {offset} + length {length} lies outside "
                f"'{location}' ({st.st_size} bytes)"
            )
        expected = _tensor_nbytes(tensor)
        if expected is not None and expected != length:
            raise ExternalDataError(
                f"{prefix}: external data length {length} does not match its shape/type "
                f"({expected} bytes)"
            )


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    in_place: bool = False,
) -> Path:
    """Writes the model atomically; the previous file at ``path`` survives any failure.

    Args:
        model: The model to save. Its lazily loaded tensors are read, not copied into memory.
        path: The output .onnx file.
        external_data: ``True`` writes weights to ``<name>.data`` beside the model (to
            ``<name>.<content hash>.data`` when the model now at ``path`` reads ``<name>.data``
            and the weights differ), ``False`` embeds them, ``None`` decides by size
            (external above the 2 GB protobuf limit).
        in_place: Allow ``path`` to be the file the model was loaded from.

    Returns:
        The path of the external-data file written, or of the model when there is none.

    Raises:
        ModelSaveError: ``path`` is the input (without ``in_place``), a folder, or not writable.
    """
    path = Path(path)
    folder = check_output_path(path, source=model.meta.get(SOURCE_PATH_KEY), in_place=in_place)
    if external_data is None:
        external_data = tensor_bytes(model) > PROTOBUF_LIMIT_BYTES
    data_name = path.name + ".data"
    data_path = folder / data_name
    referenced = _referenced_data_files(model)
    if path.resolve() in referenced:
        raise ModelSaveError(f"{path}: is an external-data file of the input model; choose another output")
    if external_data and data_path.resolve() in referenced and not in_place:
        raise ModelSaveError(
            f"{path}: would replace '{data_path}', which the input model reads its weights from; "
            "choose another output or pass --in-place"
        )
    if external_data and data_path.is_dir():
        raise ModelSaveError(f"{path}: '{data_path}' is a folder; the external-data file cannot be written")
    # NOTE: tensors in node attributes are never unloaded by ir.save; read them in so the
    # output does not keep references into the input's data file.
    _load_external_tensors(model, initializers=not external_data)
    moved: Path | None = None
    try:
        with _temp_folder(folder) as tmp:
            tmp_model = tmp / path.name
            previous = _previous_data_files(path)
            if external_data:
                ir.save(model, tmp_model, external_data=data_name)
                _fsync(tmp / data_name)
                data_path = _choose_data_path(tmp / data_name, data_path, previous)
                if data_path.name != data_name:
                    _relocate(tmp_model, data_name, data_path.name)
                    os.replace(tmp / data_name, tmp / data_path.name)
                elif data_path.resolve() in previous:
                    # The same bytes are already in place: leave that file alone.
                    (tmp / data_name).unlink()
            else:
                ir.save(model, tmp_model)
            _fsync(tmp_model)
            # NOTE: the new data goes in under a name the previous model does not read (or holds
            # the very same bytes), so the model rename alone switches old pair -> new pair.
            if external_data and (tmp / data_path.name).exists():
                if not data_path.exists():
                    moved = data_path
                os.replace(tmp / data_path.name, data_path)
            os.replace(tmp_model, path)
            moved = None
            _fsync_dir(folder)
    except OSError as e:
        raise ModelSaveError(f"{path}: cannot write ({e.strerror or e})") from None
    except ValueError as e:
        # NOTE: protobuf refuses to serialize > 2 GB; tell the user what to do.
        if "2GB" in str(e) or "too large" in str(e).lower():
            raise ModelSaveError(
                f"{path}: model exceeds the 2 GB protobuf limit; save with external data"
            ) from None
        raise
    finally:
        if moved is not None:
            # The model never switched: the data file this save added is nobody's.
            moved.unlink(missing_ok=True)
    # Only now that the new model is in place: drop the data files the previous one used.
    keep = {data_path.resolve()} if external_data else set()
    for old in previous:
        if old not in keep and _is_own_data_file(old, path) and (in_place or old not in referenced):
            old.unlink(missing_ok=True)
    return data_path if external_data else path


#: The previous model at an output path is read for its data references only when it is
#: this small (a model with external data is); a larger one embeds its weights.
_PREVIOUS_MODEL_MAX_BYTES = 64 * 1024**2
_CHUNK = 16 * 1024**2


def _previous_data_files(path: Path) -> set[Path]:
    """The data files (inside its folder) the model now at ``path`` reads; empty when none or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > _PREVIOUS_MODEL_MAX_BYTES:
            return set()
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001  # whatever is there, it is about to be replaced
        return set()
    base = path.resolve().parent
    files = set()
    for tensor, _ in external_tensors(proto):
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (base / location).resolve()
        if location and target.parent == base:
            files.add(target)
    return files


def _choose_data_path(new_data: Path, plain: Path, previous: set[Path]) -> Path:
    """``<name>.data``, unless the previous model reads it and it holds other bytes.

    Then ``<name>.<content hash>.data``: a name the previous model does not read
    (deterministic: same bytes, same name), so a crash between the renames never
    pairs the previous model with the new data.
    """
    if plain.resolve() not in previous or _same_bytes(new_data, plain):
        return plain
    digest = hashlib.blake2b(digest_size=8)
    with new_data.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return plain.with_name(f"{plain.name[: -len('.data')]}.{digest.hexdigest()}.data")


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            return False
        with a.open("rb") as fa, b.open("rb") as fb:
            while chunk := fa.read(_CHUNK):
                if chunk != fb.read(len(chunk)):
                    return False
    except OSError:
        return False
    return True


def _is_own_data_file(file: Path, model_path: Path) -> bool:
    """A data file named the way save_model names them for ``model_path`` (others are never deleted)."""
    name, prefix = file.name, model_path.name + "."
    if name == prefix + "data":
        return True
    middle = name[len(prefix) : -len(".data")] if name.startswith(prefix) and name.endswith(".data") else ""
    return len(middle) == 16 and all(c in "0123456789abcdef" for c in middle)


def _relocate(model_file: Path, old: str, new: str) -> None:
    """Points every external tensor of a saved model (weights only; small) from ``old`` to ``new``."""
    proto = onnx.load(os.fspath(model_file), load_external_data=False)
    for tensor, _ in external_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save(proto, os.fspath(model_file))


def check_output_path(
    path: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None, in_place: bool = False
) -> Path:
    """Checks an output path before any work is done; returns its folder.

    Raises:
        ModelSaveError: ``path`` is ``source`` (without ``in_place``), a folder, or its folder is missing.
    """
    path = Path(path)
    if source is not None and not in_place and path.resolve() == Path(source).resolve():
        raise ModelSaveError(
            f"{path}: refusing to overwrite the input model; choose another output or pass --in-place"
        )
    if path.is_dir():
        raise ModelSaveError(f"{path}: is a folder; give a file name such as {path / 'model.onnx'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelSaveError(f"{path}: output folder '{folder}' does not exist")
    return folder


def tensor_bytes(model: ir.Model) -> int:
    """Total bytes of all initializers (in every graph), without reading external data."""
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
    return total


def _all_tensor_slots(model: ir.Model) -> Iterator[tuple[ir.TensorProtocol, Callable[[ir.TensorProtocol], None], bool]]:
    """(tensor, setter, is_initializer) for every tensor in initializers and node attributes."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value, functools.partial(setattr, value, "const_value"), True
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    for node in nodes:
        for name, attr in list(node.attributes.items()):
            if attr.type == ir.AttributeType.TENSOR and attr.value is not None:

                def set_attr(t: ir.TensorProtocol, node: ir.Node = node, name: str = name) -> None:
                    node.attributes[name] = ir.AttrTensor(name, t)

                yield attr.value, set_attr, False
            elif attr.type == ir.AttributeType.TENSORS and attr.value:
                for index, tensor in enumerate(attr.value):

                    def set_item(t: ir.TensorProtocol, node: ir.Node = node, name: str = name,
                                 index: int = index) -> None:
                        items = list(node.attributes[name].value)
                        items[index] = t
                        node.attributes[name] = ir.AttrTensors(name, items)

                    yield tensor, set_item, False


def _referenced_data_files(model: ir.Model) -> set[Path]:
    return {
        Path(tensor.path).resolve()
        for tensor, _, _ in _all_tensor_slots(model)
        if isinstance(tensor, ir.ExternalTensor)
    }


def _load_external_tensors(model: ir.Model, *, initializers: bool) -> None:
    """Reads external tensors into memory: attribute tensors always, initializers on request."""
    for tensor, set_tensor, is_initializer in list(_all_tensor_slots(model)):
        if isinstance(tensor, ir.ExternalTensor) and (initializers or not is_initializer):
            set_tensor(ir.Tensor(tensor.numpy(), name=tensor.name))


@contextlib.contextmanager
def _temp_folder(folder: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=".onnxq-tmp-", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)


def external_tensors(proto: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every tensor stored as external data: initializers, TENSOR and TENSORS attributes, subgraphs,
    functions; each with where it is (for messages)."""
    def walk_nodes(nodes: Iterable[onnx.NodeProto], prefix: str) -> Iterator[tuple[onnx.TensorProto, str]]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    yield attr.t, f"{prefix}node '{node.name}' attribute"
                for t in attr.tensors:
                    if t.data_location == onnx.TensorProto.EXTERNAL:
                        yield t, f"{prefix}node '{node.name}' attribute"
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    yield from walk_graph(g, prefix)

    def walk_graph(graph: onnx.GraphProto, prefix: str) -> Iterator[tuple[onnx.TensorProto, str]]:
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                yield t, f"{prefix}initializer"
        yield from walk_nodes(graph.node, prefix)

    yield from walk_graph(proto.graph, "")
    for function in proto.functions:
        yield from walk_nodes(function.node, f"function '{function.name}' ")


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None
    if dtype == ir.DataType.STRING or dtype == ir.DataType.UNDEFINED:
        return None
    count = 1
    for d in tensor.dims:
        count *= d
    return (count * dtype.bitwidth + 7) // 8


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder, replaced at once."""
    target = Path(path)
    with _temp_folder(target.parent) as tmp:
        part = tmp / target.name
        part.write_bytes(data)
        _fsync(part)
        os.replace(part, target)
