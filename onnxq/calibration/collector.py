"""The collector: one onnxruntime session over an augmented copy, observers fed per sample.

The user's model is serialized to a copy whose graph outputs also name every observed tensor;
onnxruntime runs it with graph optimizations off (so intermediate names survive) and, per sample,
each observer updates its small state from the returned activation, which is then dropped.
Memory is O(one sample's activations + tensors x bins), whatever the number of samples.

What is observed: float tensors (float32/16, bfloat16, float64). By default every float tensor a
main-graph node produces plus the float graph inputs. Tensors inside subgraphs cannot be outputs
of the main graph; names given in ``tensors`` that are produced directly in a branch of a
main-graph ``If`` are observed anyway: the copy gives both branches an extra output (the tensor in
the branch that computes it, an empty tensor of its dtype in the other) and the If node an extra
output, so the tensor is observed on the samples that take its branch (its dtype must be known:
run ``infer-shapes`` first). Other subgraph tensors (Loop/Scan bodies, nested Ifs) are skipped
with a warning and listed in ``Ranges.details["not_observed"]`` (quantization leaves them in float).
A main-graph tensor whose type is unknown before running is observed if onnxruntime returns it as
a float array.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxq.calibration.data import CalibrationData
from onnxq.calibration.observers import (
    HISTOGRAM_METHODS,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
)
from onnxq.calibration.ranges import Ranges, TensorRange, model_fingerprint
from onnxq.errors import OptionError, UserError
from onnxq.runtime import for_session, session_options

logger = logging.getLogger(__name__)

METHODS = ("minmax", "moving_average", *HISTOGRAM_METHODS)
_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
#: Above this many bytes the augmented copy goes to a temporary file with external data.
_INLINE_LIMIT = 1_500_000_000
#: Activation bytes one calibration session returns at most: above it the observed tensors are read
#: in groups, a session per group (every sample runs once per group). onnxruntime holds every
#: declared output of a run at once; an 800x608 detector's activations are 620 MB a sample
#: (calibration peak 624 -> 466 MiB in 4 groups, 2.9 -> 3.0 s).
GROUP_BYTES = 160_000_000


class CalibrationError(UserError):
    """Calibration cannot run: unknown tensor names or method, or onnxruntime rejects a sample."""


@dataclasses.dataclass
class Collection:
    """The observers after a pass over the data, by tensor name, and what was left out."""

    observers: dict[str, Observer]
    samples: int
    not_observed: dict[str, str] = dataclasses.field(default_factory=dict)
    fingerprint: str = ""

    def ranges(self, method: str | None = None, **options: Any) -> Ranges:
        """Ranges from the observers; with histogram observers ``method`` (``percentile``,
        ``entropy``, ``mse`` or ``minmax``) and its options choose how, so one pass serves all."""
        tensors: dict[str, TensorRange] = {}
        empty = []
        for name in sorted(self.observers):
            observer = self.observers[name]
            if observer.empty:
                empty.append(name)
                continue
            if isinstance(observer, HistogramObserver):
                tensors[name] = observer.range(method, **options)
            elif method in (None, observer.kind) and not options:
                tensors[name] = observer.range()
            else:
                raise ValueError(f"{type(observer).__name__} gives only '{observer.kind}' ranges")
        first = next(iter(self.observers.values()), None)
        used = method or _method_of(first)
        details: dict[str, Any] = {**_details_of(first), **options}
        if empty:
            details["empty"] = empty  # only NaN/Inf or zero-size values: left in float
        if self.not_observed:
            details["not_observed"] = dict(sorted(self.not_observed.items()))
        return Ranges(
            tensors=tensors, method=used, fingerprint=self.fingerprint, samples=self.samples, details=details
        )


def _method_of(observer: Observer | None) -> str:
    if isinstance(observer, HistogramObserver):
        return observer.method
    return observer.kind if observer is not None else "minmax"


def _details_of(observer: Observer | None) -> dict[str, Any]:
    if isinstance(observer, HistogramObserver):
        return {
            "bins": observer.bins,
            "percentile": observer.percentile,
            "num_quantized_bins": observer.num_quantized_bins,
            "candidates": observer.candidates,
        }
    if isinstance(observer, MovingAverageMinMaxObserver):
        return {"momentum": observer.momentum}
    return {}


def observer_factory(method: str, **options: Any) -> Callable[[], Observer]:
    """A function making a fresh observer for ``method`` with its options (checked now)."""
    method = method.replace("-", "_")
    try:
        if method == "minmax":
            if options:
                raise TypeError(f"unexpected options {sorted(options)}")
            make: Callable[[], Observer] = MinMaxObserver
        elif method == "moving_average":
            momentum = options.pop("momentum", 0.01)
            if options:
                raise TypeError(f"unexpected options {sorted(options)}")
            make = lambda: MovingAverageMinMaxObserver(momentum)  # noqa: E731
        elif method in HISTOGRAM_METHODS:
            make = lambda: HistogramObserver(method=method, **options)  # noqa: E731
        else:
            raise OptionError(f"unknown calibration method '{method}' (choose {', '.join(METHODS)})")
        make()  # options are validated here, not after the first sample
    except (TypeError, ValueError) as e:
        raise OptionError(f"calibration method '{method}': {e}") from None
    return make


# --- which tensors -----------------------------------------------------------------------------
def _subgraph_owners(model: ir.Model) -> dict[str, str]:
    """Names of values defined inside subgraphs -> the name of the main-graph node that owns them."""
    owners: dict[str, str] = {}
    for node in model.graph:
        for attr in node.attributes.values():
            if attr.is_ref() or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else list(attr.value)
            for graph in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(graph):
                    for value in inner.outputs:
                        if value.name:
                            owners.setdefault(value.name, node.name or node.op_type)
                for value in graph.inputs:
                    if value.name:
                        owners.setdefault(value.name, node.name or node.op_type)
    return owners


def _if_branch_tensors(model: ir.Model) -> dict[str, tuple[int, str, ir.Value]]:
    """Tensors produced directly in a branch of a main-graph If -> (node index, branch, value)."""
    found: dict[str, tuple[int, str, ir.Value]] = {}
    for index, node in enumerate(model.graph):
        if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
            continue
        for branch in ("then_branch", "else_branch"):
            attr = node.attributes.get(branch)
            if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
                continue
            for inner in attr.value:
                for value in inner.outputs:
                    if value.name:
                        found.setdefault(value.name, (index, branch, value))
    return found


def _candidates(model: ir.Model) -> dict[str, ir.DataType | None]:
    """Main-graph tensors that may be observed, with their dtype when known, in graph order."""
    graph = model.graph
    found: dict[str, ir.DataType | None] = {}
    initializers = set(graph.initializers)
    for value in graph.inputs:
        if value.name and value.name not in initializers:
            found[value.name] = value.dtype
    for node in graph:
        for value in node.outputs:
            if value.name:
                found[value.name] = value.dtype
    return found


def select_tensors(model: ir.Model, tensors: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The main-graph tensors to observe and ``{name: reason}`` for requested ones skipped."""
    candidates = _candidates(model)
    skipped: dict[str, str] = {}
    if tensors is None:
        return [n for n, t in candidates.items() if t is None or t in _FLOAT_TYPES], skipped
    owners = _subgraph_owners(model)
    branches = _if_branch_tensors(model)
    chosen = []
    for name in dict.fromkeys(tensors):
        if name in candidates:
            dtype = candidates[name]
            if dtype is not None and dtype not in _FLOAT_TYPES:
                skipped[name] = f"dtype {dtype.name} is not float"
            else:
                chosen.append(name)
        elif name in branches:
            dtype = branches[name][2].dtype
            if dtype is None:
                skipped[name] = "inside an If branch with an unknown dtype; run infer-shapes first"
            elif dtype not in _FLOAT_TYPES:
                skipped[name] = f"dtype {dtype.name} is not float"
            else:
                chosen.append(name)
        elif name in owners:
            skipped[name] = (
                f"inside a subgraph of node '{owners[name]}'; only main-graph tensors are observed"
            )
        elif name in model.graph.initializers:
            skipped[name] = "an initializer (constant), not an activation"
        else:
            raise CalibrationError(f"tensor '{name}' is not in the model; cannot calibrate it")
    for name, reason in skipped.items():
        logger.warning("calibration: not observing '%s': %s", name, reason)
    return chosen, skipped


# --- session ---------------------------------------------------------------------------------
#: Suffix of the extra If outputs that carry a branch tensor out to the main graph.
_IF_ALIAS = "::onnxq.calibration"


def _augmented(model: ir.Model, names: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The serialized copy with ``names`` as graph outputs, and {graph output: tensor} for the
    branch tensors of If nodes, which reach the main graph under an alias."""
    proto = ir.serde.serialize_model(model)
    present = {o.name for o in proto.graph.output}
    branches = _if_branch_tensors(model)
    aliases: dict[str, str] = {}
    for name in names:
        if name in branches:
            index, branch, value = branches[name]
            assert value.dtype is not None  # select_tensors keeps only known float dtypes
            elem = int(value.dtype)
            node = proto.graph.node[index]
            graphs = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
            for branch_name, graph in graphs.items():
                if branch_name == branch:
                    # NOTE: through an Identity: a value that already is a branch output, listed
                    # twice, comes back from onnxruntime as None.
                    copy = f"{name}::onnxq.copy"
                    graph.node.append(onnx.helper.make_node("Identity", [name], [copy]))
                    graph.output.append(onnx.helper.make_tensor_value_info(copy, elem, None))
                    continue
                # NOTE: the other branch must yield an output of the same type: an empty tensor,
                # which the observers skip, so only samples taking the branch count.
                empty = f"{name}::onnxq.empty"
                graph.node.append(
                    onnx.helper.make_node(
                        "Constant", [], [empty], value=onnx.helper.make_tensor(empty, elem, [0], [])
                    )
                )
                graph.output.append(onnx.helper.make_tensor_value_info(empty, elem, None))
            alias = name + _IF_ALIAS
            node.output.append(alias)
            proto.graph.output.append(onnx.helper.make_tensor_value_info(alias, elem, None))
            aliases[alias] = name
        elif name not in present:
            # NOTE: no type given on purpose: onnxruntime infers it, and an unknown type would be
            # guesswork here.
            proto.graph.output.add().name = name
    return proto, aliases


def _session(proto: onnx.ModelProto, workdir: Path, external_folder: str | None) -> ort.InferenceSession:
    # NOTE: no graph optimization: it would fuse or rename the tensors we observe. Lazy weights
    # stay where they are, read from their folder (a model above the self-check's size).
    # NOTE: no arena: it keeps the largest run's activations reserved after the run (an 800x608
    # detector's calibration peaked at 900 MB with it, under the self-check's 845 MB without; same
    # time).
    opts = session_options(optimize=False, threads=0, external_folder=external_folder, arena=False)
    providers = ["CPUExecutionProvider"]
    try:
        if proto.ByteSize() < _INLINE_LIMIT:
            return ort.InferenceSession(proto.SerializeToString(), opts, providers=providers)
        path = workdir / "augmented.onnx"
        onnx.save_model(proto, path, save_as_external_data=True, location="augmented.onnx.data")
        return ort.InferenceSession(os.fspath(path), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CalibrationError(f"onnxruntime cannot load the model for calibration: {first}") from None


def output_groups(model: ir.Model, outputs: Sequence[str], feeds: Mapping[str, Any],
                  budget: int) -> list[list[str]]:
    """Tensor names ``outputs`` split, in order, into groups whose activations take at most ``budget`` bytes.

    Sizes come from ONNX shape inference on the graph alone (float weights as typed inputs, small
    constants kept for data propagation) with the inputs fixed to this sample's shapes; a tensor
    whose size stays unknown counts as the largest known one. One group when everything fits, or
    for a model too large to copy cheaply.
    """
    proto = ir.serde.serialize_model(model) if _small(model) else None
    if proto is None:
        return [list(outputs)]
    graph = proto.graph
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and _numel(t.dims) > 64]
    kept = [t for t in graph.initializer if not (t.data_type == onnx.TensorProto.FLOAT and _numel(t.dims) > 64)]
    for value in graph.input:
        if value.name in feeds:
            shape = np.shape(feeds[value.name])
            dims = value.type.tensor_type.shape.dim
            if len(dims) == len(shape):
                for dim, size in zip(dims, shape, strict=True):
                    dim.Clear()
                    dim.dim_value = int(size)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - inference may refuse a model onnxruntime runs: no grouping then
        return [list(outputs)]
    sizes: dict[str, int] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if tensor.HasField("shape") and all(d >= 0 for d in dims):
            width = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 4
            sizes[value.name] = _numel(dims) * width
    largest = max(sizes.values(), default=0)
    groups: list[list[str]] = [[]]
    used = 0
    for name in outputs:
        size = sizes.get(name, largest)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def _numel(dims: Sequence[int]) -> int:
    return int(np.prod(list(dims), dtype=np.int64)) if len(dims) else 1


def _small(model: ir.Model) -> bool:
    """Whether the model's initializers are small enough to serialize once more (under 256 MB)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None) < 256_000_000


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    )


def collect(
    model: ir.Model,
    data: Any,
    make_observer: Callable[[], Observer],
    *,
    tensors: Sequence[str] | None = None,
    progress: bool = False,
) -> Collection:
    """Runs every sample of ``data`` through an augmented copy of ``model``, feeding one observer
    per observed tensor. ``data`` is anything :meth:`CalibrationData.from_source` accepts."""
    data = CalibrationData.from_source(data)
    names, skipped = select_tensors(model, tensors)
    observers: dict[str, Observer] = {}
    samples = 0
    not_float: set[str] = set()
    groups = [names]
    if names and data.reiterable:
        first = next(iter(data.feeds(model)), None)
        if first is not None:
            groups = output_groups(model, names, first[1], GROUP_BYTES)
    with tempfile.TemporaryDirectory(prefix="onnxq-calib-") as tmp:
        # NOTE: shape constants stored outside are read in (onnxruntime's shape inference needs
        # them raw); large lazy weights stay on disk, read from their folder.
        ready, folder = for_session(model)
        total = (data.length or 0) * len(groups) if data.length is not None else None
        bar = _progress(total, progress)
        task = bar.add_task("calibrating", total=total) if bar is not None else None
        try:
            if bar is not None:
                bar.start()
            for index, group in enumerate(groups):
                # NOTE: a session per group, each declaring only its group as outputs: onnxruntime
                # keeps every declared graph output of a run alive, requested or not.
                proto, aliases = _augmented(ready, group)
                sess = _session(proto, Path(tmp), folder)
                del proto  # the session has its own copy
                wanted = set(group) | set(aliases)
                outputs = [o.name for o in sess.get_outputs() if o.name in wanted]
                for label, feeds in data.feeds(model):
                    if index == 0:
                        samples += 1
                    if not outputs:
                        # NOTE: onnxruntime reads an empty output list as "every output".
                        continue
                    try:
                        values = sess.run(outputs, feeds)
                    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
                        text = str(e).strip().splitlines()
                        raise CalibrationError(
                            f"sample {label}: onnxruntime failed: {text[0] if text else type(e).__name__}"
                        ) from None
                    for output, value in zip(outputs, values, strict=True):
                        name = aliases.get(output, output)
                        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                            not_float.add(name)
                            continue
                        observer = observers.get(name)
                        if observer is None:
                            observer = observers[name] = make_observer()
                        observer.update(value)
                    del values  # the activations of this sample are not needed any more
                    if bar is not None:
                        bar.advance(task)
                del sess
        finally:
            if bar is not None:
                bar.stop()
        del ready
    for name in not_float:
        observers.pop(name, None)
        if tensors is not None:
            skipped[name] = "onnxruntime returned a non-float value"
    # Graph order kept for readability; Ranges sorts names when it writes JSON.
    ordered = {n: observers[n] for n in names if n in observers}
    return Collection(ordered, samples, skipped, model_fingerprint(model))


def calibrate(
    model: ir.Model,
    data: Any,
    *,
    method: str = "minmax",
    tensors: Sequence[str] | None = None,
    progress: bool = False,
    **method_options: Any,
) -> Ranges:
    """Calibrated ranges of ``model``'s float tensors over ``data``.

    Args:
        model: The float model (not modified).
        data: A :class:`CalibrationData` or anything its ``from_source`` takes: a folder of
            ``.npz``, an ``.npz`` with a leading sample axis, a mapping of such arrays, an iterable
            of feed dicts, an onnxruntime ``CalibrationDataReader``.
        method: ``minmax``, ``moving_average`` (option ``momentum``, default 0.01; None = plain
            mean), ``percentile`` (``percentile``, default 99.999), ``entropy``
            (``num_quantized_bins``, default 128) or ``mse``; histogram methods also take
            ``bins`` (default 4096) and ``candidates`` (default 256).
        tensors: Names to observe; None = every float tensor produced by a main-graph node plus
            the float graph inputs.
        progress: Show a progress bar over samples (rich).

    Returns:
        Ranges with the method, its options, the sample count and the model's fingerprint.

    Raises:
        CalibrationDataError: bad or empty data (one line naming the input and sample).
        CalibrationError: unknown tensor names, or onnxruntime rejects the model or a sample.
        OptionError: unknown method or option.
    """
    make = observer_factory(method, **method_options)
    collection = collect(model, data, make, tensors=tensors, progress=progress)
    ranges = collection.ranges()
    ranges.method = method.replace("-", "_")
    ranges.details = {**ranges.details, **_public_options(method_options)}
    return ranges


def _public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(options.items()) if isinstance(v, (int, float, str, bool)) or v is None}
