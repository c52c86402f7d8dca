"""Measured sensitivity of each quantized node: how much of the metric it costs in INT8.

``analyze(prepared, ranges, evaluator, target=...)`` quantizes the prepared float model once
uniformly, then once per candidate node with only that node left in float (``exclude``), all in
memory with the same ``Ranges`` (one calibration), and scores every variant in onnxruntime on
a small held set. A node's *sensitivity* is the metric it recovers when left in float; with
``only_quantized=True`` it is also measured the other way round (only that node in INT8).

Cost: ``2 + N`` evaluations for ``N`` candidates (``2 + 2N`` with ``only_quantized``); each is one
quantize pipeline on a copy plus one onnxruntime session over the held set, so the wall time
grows linearly with the number of candidate nodes (and with the held set's size).

Candidates are the anchor nodes the placement plan quantizes (Conv, MatMul, Gemm...): leaving an
anchor in float also leaves in float the followers (Add, Concat...) that were quantized only
because of it, so one candidate stands for its group.

Hand-written: onnxruntime.quantization has no sensitivity analysis; NNCF's needs a user-written
validation function per framework, and neither measures on the deploying runtime's fused graph.
The metrics are plain numpy: top-1 agreement, cosine similarity and label accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.calibration.ranges import Ranges
from onnxq.errors import OptionError, UserError, first_line
from onnxq.runtime import Feeds, release_memory, select_inputs
from onnxq.targets import Target
from onnxq.validation import output_kinds

logger = logging.getLogger(__name__)

#: A user metric: all model outputs (concatenated over the held set along axis 0) and the
#: labels (or None) -> a score where higher is better, in the units of the budget.
Metric = Callable[[Sequence[np.ndarray], "np.ndarray | None"], float]
#: Samples stacked into one onnxruntime run when the model's batch axis is dynamic.
MAX_BATCH = 64
#: Version of the cache file layout (bump when its meaning changes).
CACHE_VERSION = 1


class MetricError(UserError):
    """A ``--metric module:function`` cannot be imported or does not return a number."""


# --- evaluation ------------------------------------------------------------------------------
def exact(name: str) -> str:
    """An include/exclude pattern that matches exactly the node called ``name``.

    NOTE: a bare name is also compared with op types and read as a regex; escaping and grouping
    makes it match this one node only (``/conv.0`` would otherwise match ``/conv_0``).
    """
    return f"(?:{re.escape(name)})"


def _batches(model: ir.Model, feeds: Sequence[Feeds]) -> list[Feeds]:
    """Feeds stacked along axis 0 (up to MAX_BATCH samples) when every input's batch axis is dynamic."""
    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    dynamic = all(v.shape is not None and len(v.shape) > 0 and not isinstance(v.shape[0], int) for v in inputs)
    if not dynamic or len(feeds) < 2:
        return [dict(f) for f in feeds]
    out: list[Feeds] = []
    group: list[Feeds] = []

    def key(f: Feeds) -> tuple[Any, ...]:
        return tuple((k, a.dtype.str, a.shape[1:]) for k, a in sorted(f.items()))

    for f in feeds:
        if group and (key(f) != key(group[0]) or len(group) >= MAX_BATCH):
            out.append({k: np.concatenate([g[k] for g in group]) for k in group[0]})
            group = []
        group.append(f)
    if group:
        out.append({k: np.concatenate([g[k] for g in group]) for k in group[0]})
    return out


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    try:
        return np.concatenate([np.asarray(p) for p in parts])
    except ValueError:  # NOTE: samples of different shapes: flatten, metrics still compare element-wise
        return np.concatenate([np.asarray(p).ravel() for p in parts])


class Evaluator:
    """Scores models on a fixed held set: higher is better, in the budget's units.

    Without labels or a metric, the score is the agreement with the float reference on output 0,
    by what it holds (:mod:`onnxq.validation.output_kinds`): top-1 agreement for class scores,
    whole-sequence agreement for CTC-like sequences, else the mean cosine similarity per sample
    (embeddings, probabilities, regressions). With labels: top-1 accuracy of output 0 against them (any shape,
    ``argmax(-1) == labels``). With ``metric``: ``metric(outputs, labels)``.
    """

    def __init__(self, reference: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], *,
                 labels: np.ndarray | None = None, metric: Metric | None = None,
                 metric_name: str | None = None) -> None:
        if not feeds:
            raise OptionError("the evaluation set is empty: give more calibration samples or --data PATH")
        self.batches = _batches(reference, [select_inputs(reference, f) for f in feeds])
        self.samples = len(feeds)
        self.labels = None if labels is None else np.asarray(labels)
        self.metric = metric
        self.evaluations = 0
        self.seconds = 0.0
        self.reference_runs = self._runs(reference)
        self.reference_outputs = self._joined(self.reference_runs)
        self.kind: str
        # NOTE: agreement on what output 0 decides, by what it holds (class scores, a CTC sequence),
        # else closeness: an embedding's arg-max means nothing (output_kinds).
        declared = output_kinds.output_kinds(reference)
        self.output_kinds = [output_kinds.kind_of_arrays(declared.get(name, output_kinds.TENSOR),
                                                         [r[i] for r in self.reference_runs])
                             for i, name in enumerate(self.output_names)]
        self.output_kind = self.output_kinds[0]
        if metric is not None:
            self.kind = metric_name or str(getattr(metric, "__name__", "metric"))
        elif self.labels is not None:
            self.kind = "top-1 accuracy against the labels"
        else:
            self.kind = {output_kinds.CLASS_SCORES: "top-1 agreement with FP32",
                         output_kinds.SEQUENCE: "sequence agreement with FP32"}.get(
                self.output_kind, "cosine similarity to FP32")
            if len(self.output_names) > 1:
                self.kind = f"worst of {len(self.output_names)} outputs ({self.kind} for the first)"
        self.reference_score = self._score(self.reference_outputs, self.reference_runs)
        self.evaluations = 0  # NOTE: the reference run is not a candidate evaluation

    def digest(self) -> str:
        """A digest of the held set, labels and metric: part of the sensitivity cache key."""
        h = hashlib.sha256(self.kind.encode())
        for batch in self.batches:
            for k in sorted(batch):
                h.update(k.encode())
                h.update(str(batch[k].shape).encode())
                h.update(np.ascontiguousarray(batch[k]).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()

    def _runs(self, model: ir.Model | bytes) -> list[list[np.ndarray]]:
        """Every output of ``model``, per batch of the held set."""
        from onnxq.validation.bench import session

        start = time.perf_counter()
        # NOTE: the previous variant (an onnx_ir graph: reference cycles, freed only by a full
        # collection) and its session's arena go back to the system first; without this a search
        # of a 14 MB CNN + LSTM held 1.5 GB of dead variants (measured, ddddocr).
        release_memory()
        sess = session(model)
        self.output_names = [o.name for o in sess.get_outputs()]
        runs = [sess.run(self.output_names, b) for b in self.batches]
        self.seconds += time.perf_counter() - start
        return runs

    @staticmethod
    def _joined(runs: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
        return [_concat([r[i] for r in runs]) for i in range(len(runs[0]) if runs else 0)]

    def outputs(self, model: ir.Model | bytes) -> list[np.ndarray]:
        """Every output of ``model`` over the held set, concatenated along axis 0."""
        return self._joined(self._runs(model))

    def _score(self, outputs: Sequence[np.ndarray], runs: Sequence[Sequence[np.ndarray]] | None = None) -> float:
        if self.metric is not None:
            try:
                value = float(self.metric(list(outputs), self.labels))
            except Exception as e:  # noqa: BLE001  # the user's code: name it, one line
                raise MetricError(f"--metric {self.kind}: raised {type(e).__name__}: {first_line(e)}") from None
            if not math.isfinite(value):
                raise MetricError(f"--metric {self.kind}: returned {value}, not a finite number")
            return value
        out = np.asarray(outputs[0])
        if self.labels is not None:
            predicted = out.argmax(-1)
            if predicted.shape != self.labels.shape:
                raise OptionError(f"labels have shape {self.labels.shape}, output 0 gives predictions of shape "
                                  f"{predicted.shape}: give --labels per sample (or a --metric)")
            return float(np.mean(predicted == self.labels))
        # NOTE: every output counts (a detector's eight heads, a transcriber's three maps): the score
        # is the worst output's, each measured by what it holds.
        return min(self._output_score(i, outputs, runs) for i in range(len(self.output_kinds)))

    def _output_score(self, i: int, outputs: Sequence[np.ndarray], runs: Sequence[Sequence[np.ndarray]] | None) -> float:
        ref = np.asarray(self.reference_outputs[i])
        out = np.asarray(outputs[i])
        if ref.shape != out.shape or out.dtype != ref.dtype:
            return 0.0
        if ref.dtype.kind != "f":
            return float(np.mean(ref == out)) if ref.size else 1.0
        if self.output_kinds[i] == output_kinds.SEQUENCE and runs is not None:
            return output_kinds.sequence_agreement([r[i] for r in self.reference_runs], [r[i] for r in runs])
        if self.output_kinds[i] == output_kinds.CLASS_SCORES:
            return float(np.mean(output_kinds.decided(ref, out)))
        a = ref.reshape(max(len(ref), 1) if ref.ndim else 1, -1).astype(np.float64)
        b = out.reshape(max(len(out), 1) if out.ndim else 1, -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        same_zero = (norms == 0) & np.all(a == b, axis=1)
        cos = np.where(same_zero, 1.0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-30))
        return float(np.mean(cos))

    def score(self, model: ir.Model | bytes) -> float:
        """The metric of ``model`` on the held set (one evaluation)."""
        self.evaluations += 1
        runs = self._runs(model)
        return self._score(self._joined(runs), runs)

    def drop(self, score: float) -> float:
        """Accuracy drop of a score against the float reference (positive = worse)."""
        return self.reference_score - score


# --- candidates and their cost ---------------------------------------------------------------
@dataclasses.dataclass
class NodeSensitivity:
    """One candidate node: what it costs in INT8 and what it weighs in compute.

    Attributes:
        node: Node name in the prepared (optimized) model.
        op_type: Its op type.
        recovered: Metric recovered when only this node is left in float (uniform INT8 as base).
        alone: Metric drop when only this node is quantized (``None`` unless measured).
        flops: Multiply-accumulates of the node (from shapes; 1 per weight when unknown).
    """

    node: str
    op_type: str
    recovered: float
    flops: float
    alone: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dims(value: ir.Value | None) -> list[int]:
    if value is None or value.shape is None:
        return []
    return [d if isinstance(d, int) and d >= 0 else 1 for d in value.shape]


def node_flops(node: ir.Node) -> float:
    """Multiply-accumulates of a Conv/MatMul/Gemm from its shapes (batch dims unknown count as 1)."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    w = _dims(weight)
    out = _dims(node.outputs[0]) if node.outputs else []
    if node.op_type in ("Conv", "ConvTranspose") and len(w) >= 3:
        spatial = out[2:] if len(out) >= 3 else [1]
        return float(np.prod(w, dtype=np.float64) * np.prod(spatial, dtype=np.float64))
    if len(w) >= 2:
        rows = out[:-1] if len(out) >= 2 else [1]
        trans_b = node.attributes.get("transB")
        k = w[-1] if node.op_type == "Gemm" and trans_b is not None and trans_b.as_int() else w[-2]
        n = out[-1] if out else w[-1]
        return float(np.prod(rows, dtype=np.float64) * k * n)
    return float(max(np.prod(w, dtype=np.float64), 1.0))


def candidates(model: ir.Model, target: Target, *, exclude: Sequence[str] = (),
               pinned: Sequence[str] = ()) -> list[ir.Node]:
    """Named anchor nodes the placement plan quantizes, in graph order (``pinned`` left out)."""
    from onnxq.passes.quantization._common import Selection
    from onnxq.passes.quantization._plan import make_plan

    plan = make_plan(model, target, Selection((), tuple(exclude)))
    keep = set(pinned)
    return [n for n in plan.quantized if n.op_type in target.anchor_ops and n.name and n.name not in keep]


# --- quantizing variants ---------------------------------------------------------------------
class Variants:
    """Quantized variants of one prepared float model, built in memory from shared ranges."""

    def __init__(self, prepared: ir.Model, ranges: Ranges, target: Target, *, per_channel: bool,
                 exclude: Sequence[str] = ()) -> None:
        self.proto = ir.to_proto(prepared)
        self.ranges = ranges
        self.target = target
        self.per_channel = per_channel
        self.exclude = tuple(exclude)
        self.built = 0
        self.seconds = 0.0

    def float_model(self) -> ir.Model:
        return ir.from_proto(self._copy())

    def _copy(self) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(self.proto)
        return copy

    def build(self, float_nodes: Sequence[str] = (), *, include: Sequence[str] = ()) -> ir.Model:
        """The model with ``float_nodes`` (and the base excludes) left in float."""
        from onnxq.framework.context import PassContext
        from onnxq.framework.pipeline import apply
        from onnxq.passes.quantization import static_pipeline

        start = time.perf_counter()
        model = self.float_model()
        exclude = (*self.exclude, *(exact(n) for n in sorted(float_nodes)))
        pipeline = static_pipeline(self.target, per_channel=self.per_channel, exclude=exclude,
                                   include=tuple(exact(n) for n in include))
        apply(model, pipeline, PassContext.with_resources([self.target, self.ranges]))
        self.built += 1
        self.seconds += time.perf_counter() - start
        return model


# --- the analysis ----------------------------------------------------------------------------
@dataclasses.dataclass
class Sensitivity:
    """Result of :func:`analyze` (also the cache file's content)."""

    metric: str
    reference_score: float
    uniform_score: float
    nodes: list[NodeSensitivity]
    evaluations: int
    seconds: float
    cached: bool = False

    @property
    def uniform_drop(self) -> float:
        return self.reference_score - self.uniform_score

    def ranked(self) -> list[NodeSensitivity]:
        """Most sensitive first (metric recovered; ties by graph order)."""
        return sorted(self.nodes, key=lambda n: -n.recovered)

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference_score": self.reference_score,
            "uniform_score": self.uniform_score,
            "nodes": [n.to_json() for n in self.nodes],
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Sensitivity:
        return cls(str(doc["metric"]), float(doc["reference_score"]), float(doc["uniform_score"]),
                   [NodeSensitivity(**n) for n in doc["nodes"]], int(doc["evaluations"]),
                   float(doc["seconds"]), cached=True)


def _progress(total: int, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from onnxq.cli._common import stderr

    return Progress(TextColumn("sensitivity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=stderr, disable=not enabled, transient=True)


def analyze(variants: Variants, evaluator: Evaluator, *, pinned: Sequence[str] = (),
            only_quantized: bool = False, progress: bool = False, deadline: float | None = None,
            executor: Any = None) -> Sensitivity:
    """Measures every candidate node (see the module docstring for the cost).

    Past ``deadline`` (a ``time.perf_counter()`` value) the remaining nodes are recorded unmeasured
    (``recovered`` 0): the search still orders them, last. With an ``executor`` of more than one
    slot (:mod:`onnxq.framework.executor`: local processes or Ray) the variants are built and
    scored in parallel: the prepared model, the ranges and the held set are shared by reference
    (put once), each task gets node names and returns a score; the result is the same as serially.
    """
    start = time.perf_counter()
    evaluations0 = evaluator.evaluations
    prepared = variants.float_model()
    nodes = candidates(prepared, variants.target, exclude=variants.exclude, pinned=pinned)
    uniform = evaluator.score(variants.build())
    if executor is not None and (executor.slots > 1 or executor.name != "local"):
        found = _analyze_parallel(variants, evaluator, nodes, uniform, only_quantized, deadline, executor)
        return Sensitivity(evaluator.kind, evaluator.reference_score, uniform, found,
                           evaluator.evaluations - evaluations0, time.perf_counter() - start)
    found: list[NodeSensitivity] = []
    with _progress(len(nodes) * (2 if only_quantized else 1), progress) as bar:
        task = bar.add_task("", total=len(nodes) * (2 if only_quantized else 1))
        for node in nodes:
            bar.update(task, description=node.name or "")
            if deadline is not None and time.perf_counter() > deadline:
                found.append(NodeSensitivity(node.name or "", node.op_type, 0.0, node_flops(node), None))
                continue
            score = evaluator.score(variants.build([node.name or ""]))
            bar.advance(task)
            alone = None
            if only_quantized:
                alone = evaluator.drop(evaluator.score(variants.build(include=[node.name or ""])))
                bar.advance(task)
            found.append(NodeSensitivity(node.name or "", node.op_type, score - uniform, node_flops(node), alone))
    return Sensitivity(evaluator.kind, evaluator.reference_score, uniform, found,
                       evaluator.evaluations - evaluations0, time.perf_counter() - start)


def score_variant(variants: Variants, evaluator: Evaluator, float_nodes: Sequence[str],
                  include: Sequence[str]) -> float:
    """One evaluation, as a task: the variant with ``float_nodes`` in float (or only ``include``
    quantized), scored on the held set."""
    return evaluator.score(variants.build(float_nodes, include=include))


def _analyze_parallel(variants: Variants, evaluator: Evaluator, nodes: Sequence[ir.Node], uniform: float,
                      only_quantized: bool, deadline: float | None, executor: Any) -> list[NodeSensitivity]:
    shared_variants, shared_evaluator = executor.put(variants), executor.put(evaluator)
    calls: list[tuple[str, bool]] = [(node.name or "", False) for node in nodes]
    if only_quantized:
        calls += [(node.name or "", True) for node in nodes]
    handles = [executor.submit(score_variant, shared_variants, shared_evaluator,
                               [] if alone else [name], [name] if alone else []) for name, alone in calls]
    index = {id(h): i for i, h in enumerate(handles)}
    scores: list[float | None] = [None] * len(handles)
    try:
        for handle, score in executor.as_completed(handles):
            scores[index[id(handle)]] = score
            if deadline is not None and time.perf_counter() > deadline:
                break
    finally:
        executor.cancel([h for h, s in zip(handles, scores, strict=True) if s is None])
    evaluator.evaluations += sum(s is not None for s in scores)
    found = []
    for i, node in enumerate(nodes):
        score = scores[i]
        alone_score = scores[len(nodes) + i] if only_quantized else None
        found.append(NodeSensitivity(node.name or "", node.op_type, 0.0 if score is None else score - uniform,
                                     node_flops(node), None if alone_score is None else evaluator.drop(alone_score)))
    return found


def cache_key(fingerprint: str, ranges: Ranges, evaluator: Evaluator, options: Mapping[str, Any]) -> str:
    """Key of a sensitivity cache entry: model, ranges, held set, metric and options."""
    doc = {"version": CACHE_VERSION, "model": fingerprint, "ranges": ranges.to_json(),
           "data": evaluator.digest(), "options": dict(sorted(options.items()))}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def load_cached(directory: str | os.PathLike[str], key: str) -> Sensitivity | None:
    path = Path(directory) / f"sensitivity-{key[:24]}.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") != key:
            return None
        return Sensitivity.from_json(doc["sensitivity"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring unreadable sensitivity cache %s (%s)", path, first_line(e))
        return None


def save_cached(directory: str | os.PathLike[str], key: str, found: Sensitivity) -> Path:
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"sensitivity-{key[:24]}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "sensitivity": found.to_json()}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # NOTE: atomic, so a concurrent run never reads half a file
    return path
