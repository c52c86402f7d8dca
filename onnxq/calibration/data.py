"""Calibration samples: where they come from, and their check against the model.

:class:`CalibrationData` (a PassContext resource) reads samples lazily, one feed dict at a time,
from any of:

- a folder of ``.npz`` files, one feed each (keys = input names), read in sorted file-name order;
- one ``.npz`` file (or a mapping of arrays) whose arrays carry a leading sample axis: sample ``i``
  is ``array[i]`` when the array has one more axis than the model input, else ``array[i:i+1]``
  (the leading axis is the model's batch axis and each sample is a batch of one). Arrays saved
  uncompressed (``np.savez``) are read one sample at a time; compressed ones
  (``np.savez_compressed``) are held in memory while the file is iterated;
- any iterable of feed dicts (a list can be iterated many times, a generator once);
- an onnxruntime ``CalibrationDataReader`` used as it is (``get_next()`` until ``None``).

Each sample is checked against the model as it is read (:meth:`CalibrationData.feeds`):
unknown (arrays named ``label``/``labels`` that are not model inputs are ignored) or missing input names, dtype, rank, dims that contradict a static dim or another
input's dim of the same symbolic name, NaN/Inf, and an empty set raise
:class:`CalibrationDataError` with one line naming the input and the sample (file name or index).
Safe casts are applied silently: float64/float16 -> float32 (any float to the float type the model
expects) and int32 <-> int64 (when the values fit). Samples may differ in shape along dynamic dims.

``take(n)`` keeps the first ``n`` samples and ``split(holdout)`` returns ``(calib, held)`` with
the last ``holdout`` samples held back (for a self-check). On a source that can be read only once
(generator, reader) both first copy the samples to a temporary folder on disk (not RAM), which
lives as long as the returned objects.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx_ir as ir

from onnxq.errors import UserError
from onnxq.framework.context import Resource

Feeds = dict[str, np.ndarray]


#: Arrays ignored when they are not model inputs: the labels that data sets keep beside the inputs.
LABEL_KEYS = frozenset({"labels", "label"})


class CalibrationDataError(UserError):
    """Calibration samples are missing, unreadable, or do not match the model's inputs."""


@runtime_checkable
class DataReader(Protocol):
    """onnxruntime's ``CalibrationDataReader`` protocol: ``get_next()`` until ``None``."""

    def get_next(self) -> Mapping[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model expects of one input: dtype and shape (ints static, strings symbolic)."""

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "?"
        if self.shape is None:
            return dtype
        return f"{dtype}[{', '.join('?' if d is None else str(d) for d in self.shape)}]"


#: Dim names exporters write for "unknown", which name no size (Paddle writes '?').
ANONYMOUS_DIM_NAMES = frozenset({"?", "-1", ""})


def named_dim(dim: ir.SymbolicDim) -> bool:
    """Whether a symbolic dim has a real name (one name = one size across inputs)."""
    return dim.value is not None and str(dim.value) not in ANONYMOUS_DIM_NAMES


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's feedable inputs (graph inputs that are not initializers)."""
    initializers = set(model.graph.initializers)
    specs = []
    for value in model.graph.inputs:
        if value.name is None or value.name in initializers:
            continue
        dtype = None
        if value.dtype is not None:
            try:
                dtype = np.dtype(value.dtype.numpy())
            except (TypeError, ValueError):
                dtype = None
        shape = None
        if value.shape is not None:
            # NOTE: legacy exporters write ``dim_value: -1`` for a dynamic axis, and Paddle names every
            # dynamic axis '?'; onnxruntime runs such a model with any size there, so both are
            # dynamic and unnamed (two '?' axes need not agree).
            shape = tuple(
                (d if d >= 0 else None) if isinstance(d, int) else (str(d.value) if named_dim(d) else None)
                for d in value.shape
            )
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


@dataclasses.dataclass(frozen=True)
class Sample:
    """One raw sample as read from its source (not yet checked)."""

    label: str
    feeds: Mapping[str, Any]
    #: The arrays are ``array[i:i+1]`` slices of a stacked source: the leading axis of length 1
    #: may be dropped to match the model's rank.
    stacked: bool = False


# --- sources ---------------------------------------------------------------------------------
class _Source:
    reiterable = True

    def __len__(self) -> int:
        raise TypeError("length unknown")

    def sample(self, index: int) -> Sample:
        raise TypeError("not indexable")

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)

    def describe(self) -> str:
        return "calibration data"


class _Folder(_Source):
    def __init__(self, root: Path, files: Sequence[Path], *, stacked: bool = False) -> None:
        self.root, self.files = root, list(files)
        # Set when the files were written from a stacked source (see Sample.stacked).
        self.stacked = stacked

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        path = self.files[index]
        try:
            with np.load(path, allow_pickle=False) as data:
                feeds = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as e:
            raise CalibrationDataError(f"sample '{path.name}': cannot read {path} ({e})") from None
        return Sample(f"'{path.name}'", feeds, stacked=self.stacked)

    def describe(self) -> str:
        return str(self.root)


class _StoredRows:
    """An uncompressed C-order array inside an .npz, read one slice of rows at a time (pread).

    ``np.load`` of an .npz reads whole arrays; memory-mapping would keep every page touched
    resident. Reading just the rows of a sample keeps memory at one sample, whatever the file size.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("only contiguous rows")
        count = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            data = f.read(count * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise CalibrationDataError(f"{self.path}: truncated array data")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))


def _npz_arrays(path: Path) -> dict[str, Any]:
    """The arrays of an .npz: stored (``np.savez``) C-order members as :class:`_StoredRows`,
    compressed or Fortran-order ones loaded whole."""
    arrays: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                header = member.tell()
            if dtype.hasobject:
                raise ValueError(f"array '{key}' holds Python objects")
            if info.compress_type == zipfile.ZIP_STORED and not fortran and len(shape) > 0:
                # The member's data starts after the zip local header (30 bytes + name + extra).
                raw.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", raw.read(4))
                start = info.header_offset + 30 + name_len + extra_len + header
                arrays[key] = _StoredRows(path, start, dtype, tuple(shape))
            else:
                with zf.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


class _Stacked(_Source):
    """Arrays with a leading sample axis, from a mapping or one .npz file (indices into it)."""

    def __init__(
        self, name: str, arrays: Mapping[str, np.ndarray] | Path, indices: range | None = None
    ) -> None:
        self.name = name
        self.arrays = arrays
        count = self._count(self._load())
        self.indices = range(count) if indices is None else indices

    def _load(self) -> Mapping[str, Any]:
        if not isinstance(self.arrays, Path):
            return self.arrays
        try:
            return _npz_arrays(self.arrays)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CalibrationDataError(f"{self.arrays}: cannot read calibration samples ({e})") from None

    def _count(self, arrays: Mapping[str, Any]) -> int:
        lengths = {}
        for key, value in arrays.items():
            if len(value.shape) == 0:
                raise CalibrationDataError(
                    f"{self.name}: input '{key}' is a scalar; expected a leading sample axis"
                )
            lengths[key] = value.shape[0]
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"'{k}': {n}" for k, n in sorted(lengths.items()))
            raise CalibrationDataError(f"{self.name}: arrays differ in sample count ({detail})")
        return next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return len(self.indices)

    def _slice(self, arrays: Mapping[str, Any], i: int) -> Sample:
        return Sample(f"'{self.name}'[{i}]", {k: v[i : i + 1] for k, v in arrays.items()}, stacked=True)

    def sample(self, index: int) -> Sample:
        return self._slice(self._load(), self.indices[index])

    def __iter__(self) -> Iterator[Sample]:
        arrays = self._load()  # NOTE: once per pass, not once per sample
        for i in self.indices:
            yield self._slice(arrays, i)

    def subset(self, indices: range) -> _Stacked:
        sub = _Stacked.__new__(_Stacked)
        sub.name, sub.arrays, sub.indices = self.name, self.arrays, indices
        return sub

    def describe(self) -> str:
        return self.name


class _List(_Source):
    def __init__(self, feeds: Sequence[Any], offset: int = 0) -> None:
        self.feeds, self.offset = feeds, offset

    def __len__(self) -> int:
        return len(self.feeds)

    def sample(self, index: int) -> Sample:
        return Sample(str(index + self.offset), self.feeds[index])

    def describe(self) -> str:
        return f"{len(self.feeds)} feed dicts"


class _OneShot(_Source):
    """A generator/iterator or a CalibrationDataReader: read once."""

    reiterable = False

    def __init__(self, source: Any) -> None:
        self.source = source
        self.used = False

    def __iter__(self) -> Iterator[Sample]:
        if self.used:
            raise CalibrationDataError(
                f"{self.describe()} was already read and cannot be read again; "
                "pass a folder, an .npz or a list, or call materialize() first"
            )
        self.used = True
        if isinstance(self.source, DataReader):
            index = 0
            while (feeds := self.source.get_next()) is not None:
                yield Sample(str(index), feeds)
                index += 1
            return
        for index, feeds in enumerate(self.source):
            yield Sample(str(index), feeds)

    def describe(self) -> str:
        return f"calibration data ({type(self.source).__name__})"


# --- the resource ----------------------------------------------------------------------------
class CalibrationData(Resource):
    """Calibration samples, read lazily and checked against the model (see the module docstring).

    Build one with :meth:`from_source` (path, mapping of stacked arrays, iterable of feed dicts,
    CalibrationDataReader) or the ``from_*`` constructors.
    """

    def __init__(self, source: _Source, *, keep: Any = None) -> None:
        self._source = source
        # A TemporaryDirectory the samples live in (removed when the last user is gone).
        self._keep = keep

    # --- constructors ------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: Any) -> CalibrationData:
        """Wraps any supported source (returns ``source`` itself if it is CalibrationData)."""
        if isinstance(source, CalibrationData):
            return source
        if isinstance(source, (str, os.PathLike)):
            return cls.from_path(source)
        if isinstance(source, Mapping):
            return cls(_Stacked("arrays", {str(k): np.asarray(v) for k, v in source.items()}))
        if isinstance(source, DataReader):
            return cls.from_reader(source)
        if isinstance(source, Iterable):
            return cls.from_feeds(source)
        raise CalibrationDataError(
            f"calibration data of type {type(source).__name__} is not supported; give a folder of .npz "
            "files, an .npz file, a list of feed dicts or a CalibrationDataReader"
        )

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> CalibrationData:
        """A folder of ``.npz`` files (one feed each) or one ``.npz`` with a leading sample axis."""
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
            if not files:
                raise CalibrationDataError(f"{path}: no .npz files in the calibration folder")
            return cls(_Folder(path, files))
        if path.is_file():
            return cls(_Stacked(path.name, path))
        raise CalibrationDataError(
            f"{path}: calibration data not found (expected a folder of .npz or an .npz file)"
        )

    @classmethod
    def from_feeds(cls, feeds: Iterable[Mapping[str, Any]]) -> CalibrationData:
        """Feed dicts; a sequence (list, tuple) can be read many times, an iterator once."""
        if isinstance(feeds, Sequence):
            return cls(_List(feeds))
        return cls(_OneShot(feeds))

    @classmethod
    def from_reader(cls, reader: DataReader) -> CalibrationData:
        """An onnxruntime ``CalibrationDataReader`` (read once, ``get_next()`` until None)."""
        return cls(_OneShot(reader))

    # --- reading -----------------------------------------------------------------------
    @property
    def reiterable(self) -> bool:
        """True when the samples can be read more than once."""
        return self._source.reiterable

    def __len__(self) -> int:
        """The number of samples; ``TypeError`` for a source read once (use :attr:`length`)."""
        return len(self._source)

    @property
    def length(self) -> int | None:
        """The number of samples, or None when the source does not know it (generators, readers)."""
        try:
            return len(self._source)
        except TypeError:
            return None

    def describe(self) -> str:
        return self._source.describe()

    def samples(self) -> Iterator[Sample]:
        """The raw samples in order (unchecked)."""
        return iter(self._source)

    def feeds(self, model: ir.Model) -> Iterator[tuple[str, Feeds]]:
        """``(label, feeds)`` per sample, checked against ``model``; an empty set is an error."""
        specs = input_specs(model)
        count = 0
        for sample in self._source:
            count += 1
            yield sample.label, check_sample(sample, specs)
        if count == 0:
            raise CalibrationDataError(f"{self.describe()}: the calibration set is empty")

    # --- subsets -----------------------------------------------------------------------
    def materialize(self, directory: str | os.PathLike[str] | None = None) -> CalibrationData:
        """Copies the samples to ``.npz`` files in ``directory`` (default: a temporary folder
        removed when the returned object and its subsets are gone); returns folder-backed data.

        Samples are written as read (unchecked), one at a time, so memory stays O(one sample).
        """
        keep = None
        if directory is None:
            keep = tempfile.TemporaryDirectory(prefix="onnxq-calib-")
            directory = keep.name
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        files = []
        stacked = False
        for index, sample in enumerate(self._source):
            if not isinstance(sample.feeds, Mapping):
                raise CalibrationDataError(
                    f"sample {sample.label}: expected a dict of input name -> array, got {type(sample.feeds).__name__}"
                )
            path = root / f"{index:08d}.npz"
            arrays = {str(k): np.asarray(v) for k, v in sample.feeds.items()}
            np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            files.append(path)
            stacked = stacked or sample.stacked
        if not files:
            raise CalibrationDataError(f"{self.describe()}: the calibration set is empty")
        return CalibrationData(_Folder(root, files, stacked=stacked), keep=keep)

    def _indexable(self) -> CalibrationData:
        return self if self._source.reiterable else self.materialize()

    def _subset(self, start: int, stop: int) -> CalibrationData:
        source = self._source
        if isinstance(source, _Folder):
            folder = _Folder(source.root, source.files[start:stop], stacked=source.stacked)
            return CalibrationData(folder, keep=self._keep)
        if isinstance(source, _Stacked):
            return CalibrationData(source.subset(source.indices[start:stop]), keep=self._keep)
        if isinstance(source, _List):
            return CalibrationData(_List(source.feeds[start:stop], source.offset + start), keep=self._keep)
        raise TypeError(f"cannot index {type(source).__name__}")

    def take(self, n: int) -> CalibrationData:
        """The first ``n`` samples (all of them when there are fewer)."""
        if n < 0:
            raise ValueError(f"take({n}): n must be >= 0")
        data = self._indexable()
        return data._subset(0, min(n, len(data)))

    def split(self, holdout: int) -> tuple[CalibrationData, CalibrationData]:
        """``(calib, held)``: the last ``holdout`` samples are held back, the rest calibrate.

        Raises CalibrationDataError when fewer than ``holdout + 1`` samples exist.
        """
        if holdout < 0:
            raise ValueError(f"split({holdout}): holdout must be >= 0")
        data = self._indexable()
        total = len(data)
        if total <= holdout:
            raise CalibrationDataError(
                f"{self.describe()}: {total} samples cannot hold back {holdout} and still calibrate"
            )
        return data._subset(0, total - holdout), data._subset(total - holdout, total)


# --- checks ----------------------------------------------------------------------------------
_FLOAT_KINDS = "f"


def _cast(name: str, label: str, array: np.ndarray, want: np.dtype[Any]) -> np.ndarray:
    have = array.dtype
    if have == want:
        return array
    if want.kind == "f" and have.kind == "f":
        return array.astype(want)
    if {have, want} <= {np.dtype(np.int32), np.dtype(np.int64)}:
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise CalibrationDataError(
                f"sample {label}: input '{name}' has {have.name} values outside {want.name}, which the model expects"
            )
        return array.astype(want)
    raise CalibrationDataError(
        f"sample {label}: input '{name}' has dtype {have.name}, the model expects {want.name}"
    )


def check_sample(sample: Sample, specs: Sequence[InputSpec]) -> Feeds:
    """The sample's feeds, cast and checked against the model's inputs (see the module docstring)."""
    label = sample.label
    if not isinstance(sample.feeds, Mapping):
        raise CalibrationDataError(
            f"sample {label}: expected a dict of input name -> array, got {type(sample.feeds).__name__}"
        )
    by_name = {spec.name: spec for spec in specs}
    for name in sample.feeds:
        # NOTE: data sets often carry their labels beside the inputs (the bundled example does);
        # they are not feeds, and a model input of that name still takes precedence.
        if name not in by_name and name not in LABEL_KEYS:
            raise CalibrationDataError(
                f"sample {label}: unknown input '{name}' (the model's inputs: {', '.join(by_name) or 'none'})"
            )
    feeds: Feeds = {}
    symbols: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if spec.name not in sample.feeds:
            raise CalibrationDataError(f"sample {label}: input '{spec.name}' is missing")
        try:
            array = np.asarray(sample.feeds[spec.name])
        except Exception as e:  # noqa: BLE001 - any conversion failure is the user's data
            raise CalibrationDataError(f"sample {label}: input '{spec.name}' is not an array ({e})") from None
        if array.dtype.kind not in "biuf":
            raise CalibrationDataError(
                f"sample {label}: input '{spec.name}' has dtype {array.dtype}, not a numeric array"
            )
        if spec.dtype is not None:
            array = _cast(spec.name, label, array, spec.dtype)
        if spec.shape is not None:
            rank = len(spec.shape)
            if sample.stacked and array.ndim == rank + 1:
                array = array[0, ...]  # NOTE: a 0-d array, not a numpy scalar, for a scalar input (sr)
            if array.ndim != rank:
                raise CalibrationDataError(
                    f"sample {label}: input '{spec.name}' has rank {array.ndim} (shape {list(array.shape)}), "
                    f"the model expects rank {rank} ({spec.describe()})"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    raise CalibrationDataError(
                        f"sample {label}: input '{spec.name}' has shape {list(array.shape)}, the model expects "
                        f"{spec.describe()} (axis {axis} must be {dim})"
                    )
                if isinstance(dim, str):
                    seen = symbols.setdefault(dim, (size, spec.name))
                    if seen[0] != size:
                        raise CalibrationDataError(
                            f"sample {label}: input '{spec.name}' axis {axis} ('{dim}') is {size} but input "
                            f"'{seen[1]}' has '{dim}' = {seen[0]}"
                        )
        if array.dtype.kind in _FLOAT_KINDS and array.size and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise CalibrationDataError(
                f"sample {label}: input '{spec.name}' contains {bad} NaN/Inf value{'s' if bad > 1 else ''}"
            )
        feeds[spec.name] = array
    return feeds
