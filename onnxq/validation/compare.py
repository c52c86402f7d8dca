"""Reference vs candidate on a data set: output metrics, per-layer SQNR, accuracy and its gate.

``compare(reference, candidate, data, labels=..., metric=...)`` runs both models in onnxruntime CPU
on every sample of ``data`` (the ``--calib`` formats: a folder of .npz, one .npz with a leading
sample axis, feed dicts) and reports:

- per output: max and mean abs error, cosine, SQNR (dB) and, for class scores (2-D ``[N, C]``
  float, ``C > 1``), top-1 agreement (:func:`onnxq.validation.self_check._fidelity`);
- per layer: the SQNR of every tensor the candidate quantizes against its float counterpart, found
  through the QDQ structure (the float tensor feeding a QuantizeLinear; the DequantizeLinear after
  it is what the candidate's consumers see), worst first, and where the error starts in graph order
  (:func:`onnxq.validation.self_check._layers`);
- accuracy, by the first rule that applies: a user metric (``callable(outputs, labels) -> float``,
  higher is better, or ``module:function`` on the CLI); labels (``--labels`` .npy/.npz, or a
  ``labels`` array in the data) -> top-1 accuracy of the first class-score output; otherwise
  agreement with the reference: top-1 agreement for class scores, else mean output SQNR in dB.

:func:`accuracy_gate` turns the accuracy drop (and optionally speed and size) into a
:class:`~onnxq.validation.bench.Verdict`. The figures are our own code because onnxruntime ships
none of them; the per-layer matching and the fidelity formulas are shared with the self-check.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.errors import OptionError, UserError, first_line
from onnxq.validation.output_kinds import output_kinds
from onnxq.validation.self_check import (
    LAYER_SAMPLES,
    LAYER_SQNR_FLOOR_DB,
    SQNR_FLOOR_DB,
    LayerFidelity,
    _fidelity,
    _layers,
)

Metric = Callable[[list[np.ndarray], "np.ndarray | None"], float]

#: Accuracy kinds, in the order the rules try them.
KINDS = ("metric", "labels", "top1-agreement", "sqnr")


class CompareError(UserError):
    """The models or the data cannot be compared (different outputs, labels that do not fit...)."""


@dataclasses.dataclass(frozen=True)
class OutputMetrics:
    """How close one output of the candidate is to the reference's."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    mean_abs_error: float
    #: Share of rows whose arg-max agrees; ``None`` when the output is not class scores.
    top1_agreement: float | None = None


#: One quantized tensor's SQNR against its float counterpart (the self-check's record).
LayerMetrics = LayerFidelity


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """The accuracy of both models under one rule (``kind``); higher is better."""

    kind: str
    reference: float
    candidate: float
    #: What was measured, in words (``top-1 accuracy against 32 labels``...).
    description: str

    @property
    def drop(self) -> float:
        """Reference minus candidate (positive: the candidate is worse)."""
        return self.reference - self.candidate


@dataclasses.dataclass
class CompareReport:
    """What :func:`compare` measured."""

    reference: str
    candidate: str
    samples: int
    rows: int
    outputs: list[OutputMetrics]
    layers: list[LayerMetrics]
    accuracy: Accuracy
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def error_starts_at(self) -> LayerMetrics | None:
        """The first layer in graph order below the per-layer floor (where the damage begins)."""
        low = [layer for layer in self.layers if layer.sqnr_db < LAYER_SQNR_FLOOR_DB]
        return min(low, key=lambda layer: layer.position) if low else None

    def to_json(self) -> dict[str, Any]:
        start = self.error_starts_at
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "samples": self.samples,
            "rows": self.rows,
            "accuracy": {"kind": self.accuracy.kind, "reference": _num(self.accuracy.reference),
                         "candidate": _num(self.accuracy.candidate), "drop": _num(self.accuracy.drop),
                         "description": self.accuracy.description},
            "outputs": [_finite(dataclasses.asdict(o)) for o in self.outputs],
            "layers": [_finite(dataclasses.asdict(layer)) for layer in self.layers],
            "error_starts_at": None if start is None else _finite(dataclasses.asdict(start)),
            "notes": list(self.notes),
        }

    def lines(self, *, top: int = 5) -> list[str]:
        acc = self.accuracy
        out = [f"{self.candidate} vs {self.reference}: {self.samples} sample(s), {self.rows} row(s)",
               f"accuracy ({acc.description}): reference {_fmt(acc.reference, acc.kind)}, "
               f"candidate {_fmt(acc.candidate, acc.kind)}, drop {_fmt(acc.drop, acc.kind)}"]
        for o in self.outputs:
            top1 = f", top-1 agreement {o.top1_agreement:.1%}" if o.top1_agreement is not None else ""
            out.append(f"output '{o.name}': SQNR {_db(o.sqnr_db)}, cosine {o.cosine:.5f}, "
                       f"max abs error {o.max_abs_error:.4g}, mean abs error {o.mean_abs_error:.4g}{top1}")
        if self.layers:
            out.append(f"worst layers (of {len(self.layers)}): "
                       + ", ".join(f"{layer.node} ('{layer.tensor}') {_db(layer.sqnr_db)}"
                                   for layer in self.layers[:top]))
        start = self.error_starts_at
        if start is not None:
            out.append(f"error starts at {start.node} ('{start.tensor}', {_db(start.sqnr_db)}): the first layer "
                       f"below {LAYER_SQNR_FLOOR_DB:g} dB in graph order")
        out.extend(f"note: {n}" for n in self.notes)
        return out


def _db(value: float) -> str:
    return "exact" if math.isinf(value) and value > 0 else f"{value:.1f} dB"


def _fmt(value: float, kind: str) -> str:
    return _db(value) if kind == "sqnr" else f"{value:.4f}"


def _num(value: float) -> float | None:
    # NOTE: JSON has no infinity; an exact match is written as null.
    return value if math.isfinite(value) else None


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}


def load_metric(spec: str | Metric) -> Metric:
    """A metric callable from itself or from ``module:function`` (or ``path/to/file.py:function``).

    Raises:
        OptionError: Malformed spec, module or file not importable, or not a callable.
    """
    if callable(spec):
        return spec
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise OptionError(f"--metric {spec!r}: expected module:function")
    try:
        if module_name.endswith(".py"):
            loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001  # any import failure is the user's module
        raise OptionError(f"--metric {spec!r}: cannot import {module_name} ({first_line(e)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OptionError(f"--metric {spec!r}: {module_name} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def load_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Labels from an .npy file, a .txt/.csv of numbers, or an .npz holding ``labels`` (or ``label``, or a single array).

    Raises:
        CompareError: Unreadable file or no labels in it.
    """
    path = Path(path)
    if path.suffix.lower() in (".txt", ".csv"):
        try:
            return np.loadtxt(path, delimiter="," if path.suffix.lower() == ".csv" else None, ndmin=1)
        except (OSError, ValueError) as e:
            raise CompareError(f"--labels {path}: cannot read labels ({first_line(e)})") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CompareError(f"--labels {path}: cannot read labels ({first_line(e)})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded as npz:
        for key in ("labels", "label"):
            if key in npz.files:
                return np.asarray(npz[key])
        if len(npz.files) == 1:
            return np.asarray(npz[npz.files[0]])
        raise CompareError(f"--labels {path}: no 'labels' array (has: {', '.join(npz.files)})")


def _as_model(model: ir.Model | str | os.PathLike[str]) -> tuple[ir.Model, str]:
    if isinstance(model, ir.Model):
        return model, model.graph.name or "model"
    from onnxq.ir.io import load_model

    return load_model(model), os.fspath(model)


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Samples' arrays joined along the batch axis (``None`` when their shapes do not allow it)."""
    try:
        return np.concatenate([np.atleast_1d(a) for a in arrays], axis=0)
    except ValueError:
        return None


def _is_scores(arrays: Sequence[np.ndarray]) -> bool:
    return bool(arrays) and all(a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f" for a in arrays)


def compare(
    reference: ir.Model | str | os.PathLike[str],
    candidate: ir.Model | str | os.PathLike[str],
    data: Any,
    *,
    labels: np.ndarray | str | os.PathLike[str] | None = None,
    metric: Metric | str | None = None,
    max_samples: int | None = None,
    layers: bool = True,
    executor: Any = None,
) -> CompareReport:
    """Runs both models on ``data`` and measures how far the candidate is from the reference.

    Args:
        reference: The float model (file or model; not modified).
        candidate: The model to judge, usually its quantized copy; same inputs and outputs.
        data: Samples in any ``--calib`` format (:meth:`CalibrationData.from_source`); arrays named
            ``labels`` are not fed, and serve as labels when ``labels`` is not given.
        labels: Labels (array, .npy or .npz), one per row of the samples' batch axis, in order.
        metric: ``fn(outputs, labels) -> float`` (higher is better), or ``module:function``.
            ``outputs`` is the list of the model's outputs in order, each joined over the samples
            along the batch axis (the per-sample list where shapes differ); ``labels`` as found.
        max_samples: Use only the first samples.
        layers: Measure per-layer SQNR (on the first few samples).
        executor: Runs both models over shards of the samples in parallel (local processes or
            Ray, :mod:`onnxq.framework.executor`): each model's bytes are put once, each task gets
            its shard of samples and sends back the outputs; the figures are computed here, the
            same as serially. A model with external data is sent as its path (a shared folder).

    Raises:
        CompareError: Models whose outputs differ, or labels that do not fit the data.
    """
    from onnxq.calibration import CalibrationData
    from onnxq.validation.bench import session

    ref_model, ref_name = _as_model(reference)
    cand_model, cand_name = _as_model(candidate)
    source = CalibrationData.from_source(data)
    if max_samples is not None:
        source = source.take(max_samples)
    feeds = [f for _, f in source.feeds(ref_model)]
    found_labels: list[np.ndarray] = []
    if labels is None:
        for sample in source.samples():
            value = next((sample.feeds[k] for k in ("labels", "label") if k in sample.feeds), None)
            if value is not None:
                found_labels.append(np.atleast_1d(np.asarray(value)))
    # NOTE: a file goes to onnxruntime as it is, an in-memory model with its weights' folder: external
    # data stays on disk either way.
    ref_sess = session(reference if not isinstance(reference, ir.Model) else ref_model)
    cand_sess = session(candidate if not isinstance(candidate, ir.Model) else cand_model)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if sorted(names) != sorted(cand_names):
        raise CompareError(f"{cand_name}: outputs {cand_names} differ from the reference's {names}")
    if executor is not None and (executor.slots > 1 or executor.name != "local") and len(feeds) > 1:
        del ref_sess, cand_sess
        refs, gots = _run_sharded(executor, reference, ref_model, candidate, cand_model, names, feeds)
    else:
        refs = [ref_sess.run(names, f) for f in feeds]
        gots = [cand_sess.run(names, f) for f in feeds]
    report = CompareReport(ref_name, cand_name, len(feeds), 0, [], [], Accuracy("sqnr", 0.0, 0.0, ""))
    per_output_ref = [[np.asarray(r[i]) for r in refs] for i in range(len(names))]
    per_output_got = [[np.asarray(g[i]) for g in gots] for i in range(len(names))]
    declared = output_kinds(ref_model)
    for name, r, g in zip(names, per_output_ref, per_output_got, strict=True):
        fid = _fidelity(name, r, g, declared.get(name))
        if fid.mismatch:
            raise CompareError(f"{cand_name}: output '{name}' differs in shape or dtype from {ref_name}'s: "
                               f"{fid.mismatch}")
        mean_abs = _mean_abs(r, g)
        # NOTE: compare reports the exact arg-max agreement (the self-check's floor excuses FP32 ties)
        report.outputs.append(OutputMetrics(name, fid.sqnr_db, fid.cosine, fid.max_abs_error, mean_abs,
                                            fid.exact_agreement if fid.top1_agreement is not None else None))
    first = per_output_ref[0] if per_output_ref else []
    report.rows = sum(int(a.shape[0]) if a.ndim else 1 for a in first)
    label_array: np.ndarray | None
    if labels is None:
        label_array = _stack(found_labels) if found_labels else None
    else:
        label_array = load_labels(labels) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
    report.accuracy = _accuracy(names, per_output_ref, per_output_got, report, label_array,
                                None if metric is None else load_metric(metric),
                                from_data=labels is None and label_array is not None)
    if layers:
        found, note = _layers(ref_model, cand_model, feeds[:LAYER_SAMPLES])
        report.layers = list(found)
        if note:
            report.notes.append(note)
        elif not found:
            report.notes.append("no per-layer figures: the candidate quantizes no tensor the reference also has")
    return report


#: Shards per executor slot (a few, so a slow shard does not hold the others up).
SHARDS_PER_SLOT = 4


def _portable(source: Any, model: ir.Model) -> bytes | str:
    """What a worker opens: the file's bytes (an in-memory model serialized), or the path of a model
    with external data."""
    from onnxq.runtime import session_bytes

    if isinstance(source, ir.Model):
        data, folder = session_bytes(source)
        if folder is None:
            return data
        raise CompareError("a model in memory with external weights cannot be sharded: give its file")
    path = Path(source)
    return path.read_bytes() if not any(v.const_value is not None and isinstance(v.const_value, ir.ExternalTensor)
                                        for v in model.graph.initializers.values()) else os.fspath(path)


def run_shard(reference: bytes | str, candidate: bytes | str, names: list[str],
              feeds: list[dict[str, np.ndarray]]) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Both models' outputs on a shard of the samples (a task)."""
    from onnxq.validation.bench import session

    ref_sess, cand_sess = session(reference), session(candidate)
    return [ref_sess.run(names, f) for f in feeds], [cand_sess.run(names, f) for f in feeds]


def _run_sharded(executor: Any, reference: Any, ref_model: ir.Model, candidate: Any, cand_model: ir.Model,
                 names: list[str], feeds: list[Any]) -> tuple[list[Any], list[Any]]:
    ref_ref = executor.put(_portable(reference, ref_model))
    cand_ref = executor.put(_portable(candidate, cand_model))
    count = min(len(feeds), executor.slots * SHARDS_PER_SLOT)
    bounds = np.linspace(0, len(feeds), count + 1).astype(int)
    shards = [[dict(f) for f in feeds[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    refs: list[Any] = []
    gots: list[Any] = []
    for r, g in executor.map(run_shard, [(ref_ref, cand_ref, names, shard) for shard in shards]):
        refs.extend(r)
        gots.extend(g)
    return refs, gots


def _mean_abs(refs: Sequence[np.ndarray], gots: Sequence[np.ndarray]) -> float:
    if not refs or refs[0].dtype.kind not in "fiu":
        return 0.0
    total = sum(float(np.sum(np.abs(r.astype(np.float64) - g.astype(np.float64)))) for r, g in zip(refs, gots,
                                                                                                  strict=True))
    count = sum(r.size for r in refs)
    return total / count if count else 0.0


def _accuracy(names: list[str], refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], report: CompareReport,
              labels: np.ndarray | None, metric: Metric | None, *, from_data: bool) -> Accuracy:
    where = "the 'labels' array of the data" if from_data else "--labels"
    if metric is not None:
        label = getattr(metric, "__name__", "metric")

        def score(outputs: list[list[np.ndarray]]) -> float:
            joined = [s if (s := _stack(o)) is not None else o for o in outputs]
            try:
                return float(metric(joined, labels))  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001  # the user's function failed: say so, in one line
                raise CompareError(f"metric {label}: raised {type(e).__name__}: {first_line(e)}") from None

        return Accuracy("metric", score(refs), score(gots), f"metric {label}")
    scores = next((i for i, r in enumerate(refs) if _is_scores(r)), None)
    if labels is not None:
        if scores is None:
            raise CompareError(f"{where}: no output looks like class scores ([N, C] float); use --metric instead")
        truth = labels.argmax(-1) if labels.ndim == 2 else labels.reshape(-1)
        if truth.shape[0] != report.rows:
            raise CompareError(f"{where}: {truth.shape[0]} labels for {report.rows} rows of data")
        ref_pred = np.concatenate([np.argmax(r, 1) for r in refs[scores]])
        got_pred = np.concatenate([np.argmax(g, 1) for g in gots[scores]])
        return Accuracy("labels", float(np.mean(ref_pred == truth)), float(np.mean(got_pred == truth)),
                        f"top-1 accuracy of '{names[scores]}' against {truth.shape[0]} labels")
    if scores is not None:
        agreement = report.outputs[scores].top1_agreement
        assert agreement is not None
        return Accuracy("top1-agreement", 1.0, agreement, f"top-1 agreement of '{names[scores]}' with the reference")
    finite = [o.sqnr_db for o in report.outputs]
    mean = float(np.mean([min(v, 200.0) for v in finite])) if finite else math.inf
    # NOTE: the reference agrees with itself exactly; inf would not survive JSON, 200 dB is "exact".
    return Accuracy("sqnr", math.inf, mean, "mean output SQNR against the reference")


def accuracy_gate(
    accuracy: Accuracy,
    *,
    max_accuracy_drop: float | None = None,
    min_sqnr_db: float | None = None,
    speedup: float | None = None,
    min_speedup: float | None = None,
    size_bytes: int | None = None,
    max_size: int | None = None,
) -> Any:
    """A pass/fail :class:`~onnxq.validation.bench.Verdict` with one line saying why.

    ``max_accuracy_drop`` is absolute, in the accuracy's own units (0.01 = one point of a 0..1
    accuracy). Without labels or a metric on outputs that are not class scores the accuracy is a
    mean SQNR, which has no drop: gate it with ``min_sqnr_db``.

    Raises:
        OptionError: ``max_accuracy_drop`` on an SQNR accuracy.
    """
    from onnxq.validation.bench import Verdict

    failures: list[str] = []
    passes: list[str] = []

    def judge(ok: bool, text: str, bad: str, good: str) -> None:
        (passes if ok else failures).append(f"{text} {good if ok else bad}")

    if max_accuracy_drop is not None:
        if accuracy.kind == "sqnr":
            raise OptionError("--max-accuracy-drop needs an accuracy: the outputs are not class scores; "
                              "give --labels or --metric, or gate on --min-sqnr")
        judge(accuracy.drop <= max_accuracy_drop + 1e-12, f"accuracy drop {accuracy.drop:.4f}",
              f"> {max_accuracy_drop:g}", f"<= {max_accuracy_drop:g}")
    if min_sqnr_db is not None:
        value = accuracy.candidate if accuracy.kind == "sqnr" else None
        if value is None:
            raise OptionError("--min-sqnr applies when accuracy is the output SQNR (no labels, no metric, "
                              "no class scores)")
        judge(value >= min_sqnr_db, f"SQNR {value:.1f} dB", f"< {min_sqnr_db:g} dB", f">= {min_sqnr_db:g} dB")
    if min_speedup is not None:
        if speedup is None:
            raise OptionError("--min-speedup needs a latency measurement")
        judge(speedup >= min_speedup, f"speedup {speedup:.2f}x", f"< {min_speedup:g}x", f">= {min_speedup:g}x")
    if max_size is not None:
        if size_bytes is None:
            raise OptionError("--max-size needs the candidate's size")
        judge(size_bytes <= max_size, f"size {size_bytes:,} B", f"> {max_size:,} B", f"<= {max_size:,} B")
    if failures:
        return Verdict(False, "FAIL: " + "; ".join(failures + passes), tuple(failures))
    return Verdict(True, "PASS: " + ("; ".join(passes) or "no criteria given"))


def default_floor(kind: str) -> tuple[float | None, float | None]:
    """The acceptance used when the user gives none: ``(max_accuracy_drop, min_sqnr_db)``."""
    return (None, SQNR_FLOOR_DB) if kind == "sqnr" else (0.01, None)


def measure_speedup(reference: str | os.PathLike[str], candidate: str | os.PathLike[str], data: Any, *,
                    budget_s: float = 2.0) -> dict[str, float]:
    """p50 latency of both files on the first sample of ``data``, interleaved (:func:`bench.bench`).

    Returns ``{"p50_ms", "fp32_p50_ms", "speedup"}`` (speedup = reference p50 / candidate p50).
    """
    from onnxq.calibration import CalibrationData
    from onnxq.ir.io import load_model
    from onnxq.validation.bench import bench

    feeds = next(f for _, f in CalibrationData.from_source(data).feeds(load_model(reference)))
    report = bench([reference, candidate], inputs=feeds, memory=False, budget_s=budget_s, warmup=3)
    ref, cand = (m.latency[0] for m in report.models)
    return {"p50_ms": cand.p50_ms, "fp32_p50_ms": ref.p50_ms, "speedup": cand.speedup}


def gate_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    data: Any = None,
    *,
    labels: Any = None,
    metric: Metric | str | None = None,
    max_accuracy_drop: float | None = None,
    min_sqnr_db: float | None = None,
    min_speedup: float | None = None,
    max_size: int | None = None,
    budget_s: float = 2.0,
) -> tuple[Any, dict[str, Any]]:
    """The acceptance gate on two files: accuracy (:func:`compare`), speed and size, as one verdict.

    Only what a criterion needs is measured. Returns the verdict and the figures (JSON-ready).

    Raises:
        OptionError: An accuracy or speed criterion without ``data``.
    """
    from onnxq.validation.bench import model_size

    needs_accuracy = max_accuracy_drop is not None or min_sqnr_db is not None
    if (needs_accuracy or min_speedup is not None) and data is None:
        raise OptionError("the accuracy and speed gates need samples: give --data PATH (or --calib PATH)")
    figures: dict[str, Any] = {"size_bytes": model_size(candidate)}
    accuracy = Accuracy("top1-agreement", 1.0, 1.0, "not measured")
    if needs_accuracy:
        report = compare(reference, candidate, data, labels=labels, metric=metric, layers=False)
        accuracy = report.accuracy
        figures["accuracy"] = report.to_json()["accuracy"]
    speedup = None
    if min_speedup is not None:
        figures["latency"] = measure_speedup(reference, candidate, data, budget_s=budget_s)
        speedup = figures["latency"]["speedup"]
    verdict = accuracy_gate(accuracy, max_accuracy_drop=max_accuracy_drop, min_sqnr_db=min_sqnr_db,
                            speedup=speedup, min_speedup=min_speedup, size_bytes=figures["size_bytes"],
                            max_size=max_size)
    figures["gate"] = verdict.to_json()
    return verdict, figures
