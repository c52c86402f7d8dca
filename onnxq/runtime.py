"""Running models on onnxruntime CPU: sessions from onnx_ir models, sample inputs, comparison.

Ground floor (imports only onnxq.errors): used by the framework's numeric checks, the converters,
validation and tests.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OptionError, UserError, first_line

Feeds = dict[str, np.ndarray]


#: Session config entry: the folder a model loaded from bytes reads its external weights from
#: (without it onnxruntime resolves them against the working directory, and refuses).
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def external_data_folders(model: ir.Model) -> set[str]:
    """Every folder the model's external (lazy) initializers live in (empty when all are in memory)."""
    return {os.fspath(value.const_value.base_dir or ".") for graph in model.graphs()
            for value in graph.initializers.values() if isinstance(value.const_value, ir.ExternalTensor)}


def external_data_folder(model: ir.Model) -> str | None:
    """The folder the model's external (lazy) weights live in; None when every weight is in memory.

    Raises:
        UserError: the external weights live in more than one folder (one session cannot read them).
    """
    folders = external_data_folders(model)
    if len(folders) > 1:
        raise UserError(f"external weights live in {len(folders)} folders ({', '.join(sorted(folders))}); "
                        "save the model once so they sit beside it")
    return folders.pop() if folders else None


def session_options(*, optimize: bool = False, threads: int = 1, external_folder: str | None = None,
                    arena: bool = True) -> ort.SessionOptions:
    """onnxruntime CPU session options: optimization level, intra-op threads, external weights' folder.

    ``arena=False`` returns each run's memory to the system after the run (for sessions that
    expose many intermediate tensors once, where the arena would keep the largest run reserved).
    """
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if external_folder is not None:
        opts.add_session_config_entry(EXTERNAL_FOLDER_KEY, external_folder)
    return opts


#: Lazy external weights up to this size are read into the bytes a session is built from:
#: onnxruntime's shape inference needs shape constants in raw form.
INLINE_EXTERNAL_BYTES = 1 << 20


def for_session(model: ir.Model) -> tuple[ir.Model, str | None]:
    """The model as a session built from bytes needs it, and the folder its external weights are read from.

    Small external tensors are read in (on a copy: ``model`` is not changed); large ones stay on
    disk and are read by onnxruntime from their folder (``session_options(external_folder=...)``).
    A model whose weights are all in memory is returned as it is.
    """
    folder = external_data_folder(model)
    if folder is not None:
        model = model.clone()
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= INLINE_EXTERNAL_BYTES:
                    # NOTE: a copy, not a view: a view into the shared mapping would keep the
                    # original's ExternalTensor from being released (read_and_release) while the
                    # clone waits for the garbage collector
                    value.const_value = ir.Tensor(np.array(tensor.numpy(), copy=True), name=tensor.name)
    return model, folder


def session_bytes(model: ir.Model) -> tuple[bytes, str | None]:
    """The model serialized for a session (see :func:`for_session`), and its external weights' folder."""
    ready, folder = for_session(model)
    return ir.serde.serialize_model(ready).SerializeToString(), folder


def session(model: ir.Model | str | os.PathLike[str], *, optimize: bool = False,
            arena: bool = True) -> ort.InferenceSession:
    """A CPU InferenceSession for an in-memory model (external weights read from their folder) or a file."""
    if isinstance(model, ir.Model):
        data, folder = session_bytes(model)
        opts = session_options(optimize=optimize, external_folder=folder, arena=arena)
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(os.fspath(model), session_options(optimize=optimize, arena=arena),
                                providers=["CPUExecutionProvider"])


def run(model: ir.Model | str | os.PathLike[str], feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Runs the model once; returns outputs by name."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


#: Size of a dynamic dim (``-1``, unnamed or symbolic) that is not the leading one. Large
#: enough for a reflect Pad or a small window over a sequence; the leading dim is a batch.
DYNAMIC_DIM = 32
#: Larger sizes tried, in order, when the model refuses the first generated inputs.
DYNAMIC_DIM_RETRIES = (256, 1024)
#: Integer inputs take values in [0, INT_HIGH), narrowed by the tables they index.
INT_HIGH = 4
#: A retry never builds an input larger than this many elements.
_MAX_ELEMENTS = 1 << 26

# Ops whose output holds the same integer values as their first input (so an index bound
# found past them applies to the model input).
_VALUE_PRESERVING = frozenset(
    {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose", "Tile", "Slice",
     "Concat"}
)
_INDEXING = {"Gather": 1, "GatherElements": 1}


class SampleInputError(UserError):
    """The model cannot run on generated inputs; the user must supply sample inputs."""


def random_inputs(
    model: ir.Model,
    *,
    seed: int = 0,
    dim_values: Mapping[str, int] | None = None,
    dynamic_dim: int = DYNAMIC_DIM,
) -> Feeds:
    """Deterministic random feeds matching the model's inputs, within what the graph tells.

    Dims written as ``-1``, unnamed or symbolic are dynamic: a named one takes
    ``dim_values[name]`` when given; otherwise the leading dim is 1 (a batch) and
    any other ``dynamic_dim``; one name gets one size across inputs. Floats are
    standard normal; integers lie in ``[0, INT_HIGH)``, and below the row count of
    every table they index (Gather / GatherElements, also through Cast, Reshape,
    Unsqueeze...), so token-type ids for a 2-row embedding stay 0 or 1.

    Raises:
        OptionError: an input without a known type or rank, or of a type that
            cannot be generated.
    """
    rng = np.random.default_rng(seed)
    dim_values = dict(dim_values or {})
    initializers = set(model.graph.initializers)
    feeds: Feeds = {}
    for value in model.graph.inputs:
        if value.name in initializers or value.name is None:
            continue
        if value.dtype is None or value.shape is None:
            raise OptionError(f"input '{value.name}' has no static type/shape; supply sample inputs")
        shape = [_dim_size(d, i, dim_values, dynamic_dim) for i, d in enumerate(value.shape)]
        try:
            dtype = np.dtype(value.dtype.numpy())
        except (TypeError, ValueError):
            raise OptionError(f"input '{value.name}' has type {value.dtype}; supply sample inputs") from None
        high = min(INT_HIGH, index_bound(value) or INT_HIGH) if np.issubdtype(dtype, np.integer) else INT_HIGH
        feeds[value.name] = random_array(shape, dtype, rng, what=f"input '{value.name}'", int_high=high)
    return feeds


def ort_dtype(type_name: str) -> np.dtype:
    """The numpy dtype of an onnxruntime type string (``tensor(uint16)`` -> uint16).

    Raises:
        OptionError: not a tensor of a numeric or bool type (strings, sequences, maps).
    """
    inner = type_name[len("tensor("):-1] if type_name.startswith("tensor(") else type_name
    try:
        return np.dtype({"float": "float32", "double": "float64"}.get(inner, inner))
    except TypeError:
        raise OptionError(f"type {type_name} cannot be generated; supply sample inputs") from None


def random_array(shape: Sequence[int], dtype: np.dtype | type, rng: np.random.Generator, *, what: str,
                 int_high: int = INT_HIGH) -> np.ndarray:
    """The one generator of sample data: standard-normal floats, integers in ``[0, int_high)``, bools.

    Raises:
        OptionError: a dtype that cannot be generated (strings, complex), naming ``what``.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, max(int_high, 1), shape).astype(dtype)
    raise OptionError(f"{what} has type {dtype}; cannot make sample inputs of it, supply them")


def _dim_size(dim: int | ir.SymbolicDim, index: int, known: dict[str, int], dynamic_dim: int) -> int:
    if isinstance(dim, int) and dim >= 0:
        return dim
    name = dim.value if isinstance(dim, ir.SymbolicDim) and str(dim.value) not in ("?", "-1", "") else None
    if name and name in known:
        return known[name]
    size = 1 if index == 0 else dynamic_dim
    if name:
        # NOTE: one symbolic name is one size, so inputs that must agree (ids and mask) do.
        known[name] = size
    return size


def index_bound(value: ir.Value, *, depth: int = 8) -> int | None:
    """The smallest table size ``value`` indexes (rows of a Gather's data on its axis), or None."""
    bound: int | None = None
    for use in value.uses():
        node, slot = use.node, use.idx
        found: int | None = None
        if node.domain in ("", "ai.onnx") and _INDEXING.get(node.op_type) == slot:
            data = node.inputs[0]
            axis_attr = node.attributes.get("axis")
            axis = axis_attr.as_int() if axis_attr is not None else 0
            shape = _known_shape(data)
            if shape is not None and -len(shape) <= axis < len(shape):
                rows = shape[axis]
                found = rows if isinstance(rows, int) and rows >= 0 else None
        elif depth > 0 and node.domain in ("", "ai.onnx") and node.op_type in _VALUE_PRESERVING and (
            slot == 0 or node.op_type == "Concat"
        ):
            for out in node.outputs:
                inner = index_bound(out, depth=depth - 1)
                if inner is not None:
                    found = inner if found is None else min(found, inner)
        if found is not None:
            bound = found if bound is None else min(bound, found)
    return bound


def _known_shape(value: ir.Value | None) -> ir.ShapeProtocol | None:
    """The value's shape, or that of the constant behind it (before any shape inference ran)."""
    if value is None:
        return None
    if value.shape is not None:
        return value.shape
    if value.const_value is not None:
        return value.const_value.shape
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
            return attr.value.shape
    return None


def runnable_inputs(model: ir.Model, *, seed: int = 0) -> tuple[Feeds, Feeds]:
    """Generated feeds the untouched model runs on, and its outputs on them.

    Tries :func:`random_inputs` with dynamic dims of ``DYNAMIC_DIM``, then each of
    ``DYNAMIC_DIM_RETRIES`` (a reflect Pad or a window may need a longer axis).

    Raises:
        SampleInputError: the model fails on every try (one line, asking for sample inputs).
    """
    error: Exception | None = None
    for size in (DYNAMIC_DIM, *DYNAMIC_DIM_RETRIES):
        feeds = random_inputs(model, seed=seed, dynamic_dim=size)
        if error is not None and any(a.size > _MAX_ELEMENTS for a in feeds.values()):
            break
        try:
            return feeds, run(model, feeds)
        except Exception as e:  # noqa: BLE001  # ORT raises assorted types; all mean "cannot run"
            error = e
    assert error is not None
    raise SampleInputError(
        f"the model itself fails on generated inputs ({first_line(error)}); "
        "supply sample inputs (--inputs FILE.npz)"
    ) from error


def select_inputs(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """The feeds the model takes (extra arrays such as labels are dropped); errors name missing inputs."""
    initializers = set(model.graph.initializers)
    names = [v.name for v in model.graph.inputs if v.name not in initializers]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise OptionError(
            f"sample inputs lack {', '.join(repr(m) for m in missing)} (have: {', '.join(sorted(feeds))})"
        )
    return {n: np.asarray(feeds[n]) for n in names if n is not None}


def load_inputs(path: str | os.PathLike[str]) -> Feeds:
    """Sample inputs from an .npz file (keys = input names) or a folder of <input>.npy files."""
    path = Path(path)
    try:
        if path.is_dir():
            return {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise OptionError(f"{path}: cannot read sample inputs ({e})") from None


@dataclasses.dataclass(frozen=True)
class Mismatch:
    output: str
    max_abs_diff: float
    detail: str

    def __str__(self) -> str:
        return f"output '{self.output}': {self.detail}"


def compare(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list[Mismatch]:
    """Outputs that differ in name, shape, dtype or value beyond ``atol + rtol*|expected|``."""
    problems = []
    for name, want in expected.items():
        if name not in actual:
            problems.append(Mismatch(name, float("inf"), "missing"))
            continue
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(
                Mismatch(name, float("inf"), f"{got.dtype}{list(got.shape)} != {want.dtype}{list(want.shape)}")
            )
            continue
        if want.dtype.kind in "fc":
            wide = np.complex128 if want.dtype.kind == "c" else np.float64
            w, g = want.astype(wide), got.astype(wide)
            same = (w == g) | (np.isnan(w) & np.isnan(g))  # equal infinities and NaNs match
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.where(same, 0.0, np.abs(g - w))
            diff = np.nan_to_num(diff, nan=np.inf, posinf=np.inf)
            worst = float(np.max(diff)) if diff.size else 0.0
            ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(w))))
        else:
            ok = bool(np.array_equal(got, want))
            worst = 0.0 if ok else float("inf")
        if not ok:
            problems.append(Mismatch(name, worst, f"max abs diff {worst:.3g} (rtol={rtol}, atol={atol})"))
    return problems


def release_memory() -> None:
    """Collects garbage and returns freed heap pages to the system (glibc ``malloc_trim``).

    Sessions built and dropped one after another (a search over model variants) leave freed
    arenas mapped; without this, peak RSS grows with the number of sessions, not their size.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # NOTE: not glibc (macOS, musl): the pages stay mapped, nothing breaks
        pass
