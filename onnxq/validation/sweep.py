"""``sweep``: quantize one model with several strategies, measure each, recommend one.

Each strategy (a function ``fn(model, calibration) -> model`` in a :class:`StrategyRegistry`;
more register themselves with :func:`register_strategy` or the ``onnxq.strategies`` entry point)
quantizes a copy of the float model into the out dir. Built-ins: dynamic; static with minmax,
percentile, entropy or MSE ranges; static per-tensor; mixed precision (the fewest nodes in float for
the gate's accuracy budget, :mod:`onnxq.quantization.mixed_precision`). A result's accuracy follows
the rules of :func:`onnxq.validation.compare.compare` (user metric, labels, else agreement with
FP32) and its size is the file's. Strategies run in parallel worker processes with ``jobs > 1``;
latency is measured afterwards in this process, one strategy at a time, interleaved with the FP32
model (:func:`onnxq.validation.compare.measure_speedup`, on ``bench``'s interleaved timer), so
parallel work never disturbs a timing.

A finished strategy's result is cached as ``<out_dir>/<name>.json`` under a key made of the model's
fingerprint and file digest, the strategy's name and the options (data files' names, sizes and
times, labels, metric); a rerun with the same key reuses it without quantizing again.

The recommendation is the fastest strategy that passes the gate (``max_accuracy_drop``,
``min_speedup``, ``min_sqnr_db``; with none given: a drop of at most one point, or 20 dB SQNR when
accuracy is an SQNR).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.errors import OnnxqError, OptionError, UserError, first_line

logger = logging.getLogger(__name__)

StrategyFn = Callable[..., ir.Model]
#: Entry-point group of strategy plugins.
ENTRY_POINT_GROUP = "onnxq.strategies"
#: Bump when the cached result's meaning changes.
CACHE_VERSION = 1
LATENCY_BUDGET_S = 2.0


@dataclasses.dataclass(frozen=True)
class StrategyContext:
    """What a strategy may want beyond the model and calibration data (passed as ``context=``)."""

    #: The gate's accuracy budget (``None``: not given).
    max_accuracy_drop: float | None
    #: A folder the strategy may keep caches in (inside the sweep's out dir).
    cache_dir: str


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A named way to quantize: ``fn(float_model, calibration) -> quantized model`` (may work in place).

    A ``fn`` with a ``context`` parameter also gets a :class:`StrategyContext`. ``fn`` must be
    picklable (a module-level function or a ``functools.partial`` of one) for ``jobs > 1``.
    """

    name: str
    fn: StrategyFn
    summary: str = ""


def _quantize_with(model: ir.Model, calibration: Any, *, mode: str, method: str = "minmax",
                   per_channel: bool = True) -> ir.Model:
    from onnxq.quantization.quantize import quantize

    quantized, _ = quantize(model, calibration, mode=mode, method=method, per_channel=per_channel,
                            self_check=False)
    return quantized


def _weight_only_int4(model: ir.Model, calibration: Any) -> ir.Model:
    from onnxq.quantization.quantize import quantize

    quantized, report = quantize(model, calibration, mode="weight-only", self_check=False)
    if not report.stats.get("quantize-weights-int4.matmuls_int4"):
        # NOTE: a model without constant MatMul / Gemm weights would come back float under this name
        raise UserError("no MatMul or Gemm with a constant weight: nothing for 4-bit weights")
    return quantized


def _weight_only_gptq(model: ir.Model, calibration: Any) -> ir.Model:
    from onnxq.quantization.quantize import quantize

    quantized, report = quantize(model, calibration, mode="weight-only", algo="gptq", self_check=False)
    if not report.stats.get("quantize-weights-int4.matmuls_int4"):
        raise UserError("no MatMul or Gemm with a constant weight: nothing for 4-bit weights")
    return quantized


#: Calibration samples the float16 strategy reads for its float32 islands (as convert-precision).
FLOAT16_SAMPLES = 32


def _float16(model: ir.Model, calibration: Any, *, context: StrategyContext) -> ir.Model:
    from onnxq.calibration import CalibrationData, calibrate
    from onnxq.framework.context import PassContext
    from onnxq.framework.pipeline import Pipeline, apply
    from onnxq.passes.precision import ConvertFloat16

    data = CalibrationData.from_source(calibration).take(FLOAT16_SAMPLES)
    ranges = calibrate(model, [dict(f) for _, f in data.feeds(model)])
    apply(model, Pipeline([ConvertFloat16()]), PassContext.with_resources([ranges]))
    _refuse_if_onnxruntime_crashes(model, Path(context.cache_dir))
    return model


def _refuse_if_onnxruntime_crashes(model: ir.Model, folder: Path) -> None:
    """Loads ``model`` in a child process first: onnxruntime 1.32's ORT_ENABLE_ALL optimizer crashed
    (segfault) on a float16 CNN + GRU, which would take the whole sweep down with it."""
    import subprocess
    import sys

    from onnxq.ir.io import save_model

    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "float16-probe.onnx"
    save_model(model, probe)
    try:
        code = subprocess.run([sys.executable, "-c", "import sys, onnxruntime as ort; "
                               "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])", str(probe)],
                              capture_output=True, timeout=600).returncode
    finally:
        probe.unlink(missing_ok=True)
    if code < 0:
        import onnxruntime

        raise UserError(f"onnxruntime {onnxruntime.__version__} crashes (signal {-code}) optimizing the float16 "
                        "model for CPU; 'onnxq convert-precision' still writes it (for GPUs, TensorRT, CoreML)")
    if code != 0:
        raise UserError("onnxruntime cannot load the float16 model")


def _mixed_precision(model: ir.Model, calibration: Any, *, context: StrategyContext) -> ir.Model:
    from onnxq.quantization.mixed_precision import quantize_mixed

    # NOTE: the search scores on calibration samples it holds back (agreement with FP32), never on the
    # sweep's evaluation data, so the accuracy the sweep reports is not tuned on.
    budget = context.max_accuracy_drop if context.max_accuracy_drop is not None else 0.01
    quantized, _ = quantize_mixed(model, calibration, max_accuracy_drop=budget, self_check=False,
                                  measure_latency=False, cache_dir=context.cache_dir)
    return quantized


_BUILTINS: tuple[Strategy, ...] = (
    Strategy("dynamic", functools.partial(_quantize_with, mode="dynamic"),
             "dynamic int8: weights per-channel, activations at run time"),
    Strategy("static-minmax", functools.partial(_quantize_with, mode="static", method="minmax"),
             "static QDQ, min/max ranges, per-channel weights"),
    Strategy("static-percentile", functools.partial(_quantize_with, mode="static", method="percentile"),
             "static QDQ, percentile ranges, per-channel weights"),
    Strategy("static-entropy", functools.partial(_quantize_with, mode="static", method="entropy"),
             "static QDQ, entropy (KL) ranges, per-channel weights"),
    Strategy("static-mse", functools.partial(_quantize_with, mode="static", method="mse"),
             "static QDQ, MSE ranges, per-channel weights"),
    Strategy("static-minmax-per-tensor",
             functools.partial(_quantize_with, mode="static", method="minmax", per_channel=False),
             "static QDQ, min/max ranges, per-tensor weights"),
    Strategy("weight-only-int4", _weight_only_int4,
             "4-bit MatMul weights in blocks of 32 along K (MatMulNBits, RTN), activations float"),
    Strategy("weight-only-int4-gptq", _weight_only_gptq,
             "4-bit MatMul weights in blocks of 32 along K by GPTQ (calibrated), activations float"),
    Strategy("fp16", _float16,
             "float16 weights and compute, float32 islands where calibrated ranges overflow, float32 I/O"),
    Strategy("mixed-precision", _mixed_precision,
             "static QDQ (min/max), the fewest nodes left in float so agreement with FP32 drops at most "
             "the gate's --max-accuracy-drop (default 0.01)"),
)


class StrategyRegistry:
    """Strategies by name; :meth:`default` holds the built-ins and what :func:`register_strategy` adds."""

    def __init__(self, strategies: Iterable[Strategy] = ()) -> None:
        self._strategies: dict[str, Strategy] = {}
        for strategy in strategies:
            self.add(strategy)

    def add(self, strategy: Strategy) -> None:
        if not strategy.name or any(c in strategy.name for c in ", /\\"):
            raise OptionError(f"strategy name {strategy.name!r}: use letters, digits and '-'")
        self._strategies[strategy.name] = strategy

    def get(self, name: str) -> Strategy:
        try:
            return self._strategies[name]
        except KeyError:
            raise OptionError(f"unknown strategy {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._strategies)

    def load_entry_points(self) -> None:
        """Strategies of installed packages (group ``onnxq.strategies``): each entry point is a
        :class:`Strategy` or a callable returning some; a broken one is logged and skipped."""
        from importlib import metadata

        if os.environ.get("ONNXQ_NO_PLUGINS"):
            return
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
                for strategy in [obj] if isinstance(obj, Strategy) else list(obj()):
                    if not isinstance(strategy, Strategy):
                        raise TypeError(f"{strategy!r} is not an onnxq Strategy")
                    self.add(strategy)
            except Exception as e:  # noqa: BLE001  # a broken plugin must not break the tool
                logger.warning("strategy plugin '%s' not loaded: %s", ep.name, e)

    @classmethod
    def default(cls) -> StrategyRegistry:
        """The process-wide registry: built-ins, then plugins, then what :func:`register_strategy` adds."""
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls(_BUILTINS)
            _DEFAULT.load_entry_points()
        return _DEFAULT


# NOTE: the one process-wide registry, so a plugin's register_strategy() call is seen by the CLI.
_DEFAULT: StrategyRegistry | None = None


def register_strategy(name: str, fn: StrategyFn, *, summary: str = "") -> None:
    """Adds (or replaces) a strategy in the default registry."""
    StrategyRegistry.default().add(Strategy(name, fn, summary))


@dataclasses.dataclass
class StrategyResult:
    """One strategy's figures (``None`` until measured, or when it failed: see ``error``)."""

    name: str
    path: str | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    size_bytes: int | None = None
    p50_ms: float | None = None
    fp32_p50_ms: float | None = None
    speedup: float | None = None
    error: str | None = None
    seconds: float = 0.0
    cached: bool = False
    passes: bool = False
    pareto: bool = False
    recommended: bool = False
    verdict: str | None = None


@dataclasses.dataclass
class SweepReport:
    model: str
    out_dir: str
    accuracy_kind: str
    accuracy_description: str
    reference_accuracy: float | None
    strategies: list[StrategyResult]
    acceptance: str
    min_accuracy: float | None
    min_speedup: float | None
    recommended: str | None
    gated: bool

    @property
    def passed(self) -> bool:
        return self.recommended is not None

    def gate_line(self) -> str:
        if self.recommended is None:
            return f"FAIL: no strategy passes ({self.acceptance})"
        best = next(s for s in self.strategies if s.name == self.recommended)
        return f"PASS: {best.name} ({best.verdict.removeprefix('PASS: ') if best.verdict else self.acceptance})"

    def to_json(self) -> dict[str, Any]:
        fp32 = [s.fp32_p50_ms for s in self.strategies if s.fp32_p50_ms is not None]
        return {
            "model": self.model,
            "out_dir": self.out_dir,
            "accuracy_kind": self.accuracy_kind,
            "accuracy_description": self.accuracy_description,
            "reference_accuracy": self.reference_accuracy,
            "reference_p50_ms": float(np.median(fp32)) if fp32 else None,
            "acceptance": self.acceptance,
            "min_accuracy": self.min_accuracy,
            "min_speedup": self.min_speedup,
            "recommended": self.recommended,
            "gate": {"passed": self.passed, "line": self.gate_line()} if self.gated else None,
            "strategies": [_finite(dataclasses.asdict(s)) for s in self.strategies],
        }

    def lines(self) -> list[str]:
        out = [f"{self.model}: {len(self.strategies)} strategies; accuracy = {self.accuracy_description}"
               + ("" if self.reference_accuracy is None else f" (FP32 {self.reference_accuracy:.4f})"),
               f"acceptance: {self.acceptance}"]
        for s in self.strategies:
            if s.error is not None:
                out.append(f"  {s.name}: failed: {s.error}")
                continue
            flags = [f for f, on in (("passes", s.passes), ("pareto", s.pareto), ("RECOMMENDED", s.recommended),
                                     ("cached", s.cached)) if on]
            out.append(f"  {s.name}: accuracy {_fmt(s.accuracy)}, drop {_fmt(s.accuracy_drop)}, "
                       f"p50 {_fmt(s.p50_ms, '{:.3f}')} ms, speedup {_fmt(s.speedup, '{:.2f}')}x, "
                       f"size {(s.size_bytes or 0) / 1e6:.3f} MB" + (f" [{', '.join(flags)}]" if flags else ""))
        out.append(f"recommended: {self.recommended or 'none: no strategy passes the gate'}")
        return out


def _fmt(value: float | None, fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


# --- cache keys --------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_key(source: Any) -> Any:
    """What identifies a data source: files' names, sizes and times (contents are not read)."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]
    if callable(source):
        return f"{getattr(source, '__module__', '')}:{getattr(source, '__qualname__', repr(source))}"
    # NOTE: in-memory data has no stable identity; its digest is its bytes.
    h = hashlib.sha256()
    items = source.items() if isinstance(source, dict) else enumerate(source)
    for key, value in items:
        h.update(str(key).encode())
        if isinstance(value, dict):
            for k in sorted(value):
                h.update(k.encode() + np.ascontiguousarray(value[k]).tobytes())
        else:
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def cache_key(model_digest: str, strategy: str, options: dict[str, Any]) -> str:
    doc = json.dumps({"version": CACHE_VERSION, "model": model_digest, "strategy": strategy, "options": options},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


# --- one strategy (in a worker process when jobs > 1) ---------------------------------------
@dataclasses.dataclass(frozen=True)
class _Task:
    name: str
    fn: StrategyFn
    model: str
    calibration: Any
    data: Any
    labels: Any
    metric: Any
    output: str
    context: StrategyContext


def _run_strategy(task: _Task) -> dict[str, Any]:
    """Quantizes and measures accuracy and size; errors of the user's kind are returned, not raised."""
    import time

    from onnxq.ir.io import load_model, save_model
    from onnxq.validation.bench import model_size
    from onnxq.validation.compare import compare

    start = time.perf_counter()
    try:
        model = load_model(task.model)
        quantized = (task.fn(model, task.calibration, context=task.context) if _takes_context(task.fn)
                     else task.fn(model, task.calibration))
        save_model(quantized, task.output)
        report = compare(task.model, task.output, task.data, labels=task.labels, metric=task.metric, layers=False)
    except OnnxqError as e:
        return {"name": task.name, "error": first_line(e), "seconds": time.perf_counter() - start}
    acc = report.accuracy
    return {"name": task.name, "path": task.output, "accuracy": acc.candidate,
            "accuracy_drop": None if acc.kind == "sqnr" else acc.drop, "reference_accuracy": acc.reference,
            "kind": acc.kind, "description": acc.description, "size_bytes": model_size(task.output),
            "seconds": time.perf_counter() - start}


def _takes_context(fn: StrategyFn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "context" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def sweep(
    model: str | os.PathLike[str],
    calibration: Any,
    data: Any,
    *,
    out_dir: str | os.PathLike[str],
    strategies: Sequence[str] | None = None,
    labels: Any = None,
    metric: Any = None,
    jobs: int = 1,
    max_accuracy_drop: float | None = None,
    min_speedup: float | None = None,
    min_sqnr_db: float | None = None,
    latency_budget_s: float = LATENCY_BUDGET_S,
    registry: StrategyRegistry | None = None,
    progress: bool = False,
    executor: Any = None,
) -> SweepReport:
    """Runs the strategies on ``model`` and recommends the fastest that passes the gate.

    Args:
        model: The float .onnx file (never modified).
        calibration: Calibration samples for static strategies (any ``--calib`` format).
        data: Evaluation samples (any ``--calib`` format; a ``labels`` array in it is used as labels).
        out_dir: Where the quantized models and the cached results go (created).
        strategies: Names to run (default: every strategy in the registry).
        labels / metric: As for :func:`onnxq.validation.compare.compare`.
        executor: Where the strategies run (:mod:`onnxq.framework.executor`; default
            ``LocalExecutor(jobs)``). On Ray the model bytes and the samples go to the object
            store once and every task reads them by reference; the quantized models come back
            to this process, which writes, caches and times them.
        jobs: Strategies quantized in parallel worker processes (latency is measured afterwards,
            one at a time, in this process).
        max_accuracy_drop / min_speedup / min_sqnr_db: The gate (see the module docstring).
        latency_budget_s: Timed seconds per strategy (interleaved with FP32).
        registry: Where strategy names are looked up (default: :meth:`StrategyRegistry.default`).
        progress: Show a progress display on stderr.

    Raises:
        OptionError: Unknown strategy, bad ``jobs``, or a gate that does not fit the accuracy kind.
    """
    from onnxq.calibration.ranges import model_fingerprint
    from onnxq.ir.io import load_model

    registry = registry or StrategyRegistry.default()
    names = list(strategies) if strategies else registry.names()
    if len(set(names)) != len(names):
        raise OptionError(f"--strategies lists a strategy twice: {', '.join(names)}")
    chosen = [registry.get(n) for n in names]
    if jobs < 1:
        raise OptionError(f"--jobs must be at least 1, got {jobs}")
    model_path = Path(model)
    if not model_path.is_file():
        raise UserError(f"{model_path}: no such file")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = model_fingerprint(load_model(model_path)) + ":" + _file_digest(model_path)
    options = {"calibration": _source_key(calibration), "data": _source_key(data), "labels": _source_key(labels),
               "metric": metric if isinstance(metric, str) else _source_key(metric)}
    results: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    todo: list[_Task] = []
    for strategy in chosen:
        # NOTE: a strategy that reads the budget gives another model for another budget.
        budget = {"max_accuracy_drop": max_accuracy_drop} if _takes_context(strategy.fn) else {}
        keys[strategy.name] = cache_key(digest, strategy.name, options | budget)
        cached = _load_cache(out / f"{strategy.name}.json", keys[strategy.name])
        if cached is not None:
            cached["cached"] = True
            results[strategy.name] = cached
            continue
        context = StrategyContext(max_accuracy_drop, os.fspath(out / ".cache"))
        todo.append(_Task(strategy.name, strategy.fn, os.fspath(model_path), calibration, data, labels, metric,
                          os.fspath(out / f"{strategy.name}.onnx"), context))

    from onnxq.framework.executor import LocalExecutor

    own = executor is None
    executor = LocalExecutor(min(jobs, max(len(todo), 1))) if own else executor
    try:
        with _Progress(progress, len(todo) + len(chosen)) as bar:
            for done in _map(todo, executor, bar):
                results[done["name"]] = done
                if done.get("error") is None:
                    _save_cache(out / f"{done['name']}.json", keys[done["name"]], done)
            for strategy in chosen:
                result = results[strategy.name]
                bar.step(f"timing {strategy.name}")
                # NOTE: latency is measured here, one model at a time, whatever ran the strategies
                if result.get("error") is None and result.get("p50_ms") is None:
                    result.update(_latency(model_path, Path(result["path"]), data, latency_budget_s))
                    _save_cache(out / f"{strategy.name}.json", keys[strategy.name], result)
    finally:
        if own:
            executor.close()
    return _decide(os.fspath(model_path), os.fspath(out), [results[s.name] for s in chosen],
                   max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, min_sqnr_db=min_sqnr_db)


def _map(tasks: list[_Task], executor: Any, bar: _Progress) -> Iterable[dict[str, Any]]:
    if not tasks:
        return
    if executor.name == "local":
        handles = [executor.submit(_run_strategy, task) for task in tasks]
    else:
        # NOTE: a cluster's workers cannot read this machine's files: the model and the samples go
        # to the object store once, each task gets references, and the quantized model comes back
        from onnxq.ir.io import load_model

        first = tasks[0]
        model_ref = executor.put(Path(first.model).read_bytes())
        reference = load_model(first.model)
        calibration_ref = executor.put(_in_memory(first.calibration, reference))
        data_ref = executor.put(_in_memory(first.data, reference))
        labels = first.labels
        if isinstance(labels, (str, os.PathLike)):
            from onnxq.validation.compare import load_labels

            labels = load_labels(labels)
        handles = [executor.submit(_run_portable, dataclasses.replace(task, calibration=None, data=None, labels=labels),
                                   model_ref, calibration_ref, data_ref) for task in tasks]
    by_handle = {id(h): task for h, task in zip(handles, tasks, strict=True)}
    for handle, result in executor.as_completed(handles):
        task = by_handle[id(handle)]
        bar.step(f"quantized {task.name}")
        blob = result.pop("model_bytes", None)
        if blob is not None:
            from onnxq.ir.io import write_bytes_atomically

            write_bytes_atomically(task.output, blob)
            result["path"] = task.output
        yield result


def _in_memory(source: Any, model: ir.Model) -> Any:
    """Samples as a list of feed dicts (a path read here, once), for workers on other machines."""
    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    from onnxq.calibration.data import CalibrationData

    return [dict(feed) for _, feed in CalibrationData.from_source(source).feeds(model)]


def _run_portable(task: _Task, model_bytes: bytes, calibration: Any, data: Any) -> dict[str, Any]:
    """:func:`_run_strategy` on a worker that has only what it was sent: files in a temporary
    folder, the quantized model returned as bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onnxq-sweep-") as tmp:
        model = Path(tmp) / "model.onnx"
        model.write_bytes(model_bytes)
        local = dataclasses.replace(task, model=os.fspath(model), output=os.fspath(Path(tmp) / "out.onnx"),
                                    calibration=calibration, data=data,
                                    context=dataclasses.replace(task.context, cache_dir=os.fspath(Path(tmp) / "cache")))
        result = _run_strategy(local)
        if result.get("error") is None:
            result["model_bytes"] = Path(local.output).read_bytes()
            result.pop("path", None)
        return result


def _latency(model: Path, candidate: Path, data: Any, budget_s: float) -> dict[str, Any]:
    from onnxq.validation.compare import measure_speedup

    return measure_speedup(model, candidate, data, budget_s=budget_s)


def _decide(model: str, out_dir: str, rows: list[dict[str, Any]], *, max_accuracy_drop: float | None,
            min_speedup: float | None, min_sqnr_db: float | None) -> SweepReport:
    from onnxq.validation.compare import Accuracy, accuracy_gate, default_floor
    from onnxq.validation.report import pareto_front

    ok = [r for r in rows if r.get("error") is None]
    kind = ok[0]["kind"] if ok else "top1-agreement"
    gated = max_accuracy_drop is not None or min_speedup is not None or min_sqnr_db is not None
    if max_accuracy_drop is None and min_sqnr_db is None:
        max_accuracy_drop, min_sqnr_db = default_floor(kind)
    if kind == "sqnr" and max_accuracy_drop is not None and gated:
        raise OptionError("--max-accuracy-drop needs an accuracy: the outputs are not class scores; "
                          "give --labels or --metric, or gate on --min-sqnr")
    if kind == "sqnr":
        max_accuracy_drop = None
    ref_acc = ok[0]["reference_accuracy"] if ok and kind != "sqnr" else None
    parts = []
    if max_accuracy_drop is not None:
        parts.append(f"accuracy drop <= {max_accuracy_drop:g}")
    if min_sqnr_db is not None and kind == "sqnr":
        parts.append(f"SQNR >= {min_sqnr_db:g} dB")
    if min_speedup is not None:
        parts.append(f"speedup >= {min_speedup:g}x")
    results = []
    for row in rows:
        fields = {f.name for f in dataclasses.fields(StrategyResult)}
        result = StrategyResult(**{k: v for k, v in row.items() if k in fields})
        if result.error is None:
            acc = Accuracy(kind, row["reference_accuracy"], row["accuracy"], row["description"])
            verdict = accuracy_gate(acc, max_accuracy_drop=max_accuracy_drop,
                                    min_sqnr_db=min_sqnr_db if kind == "sqnr" else None,
                                    speedup=result.speedup, min_speedup=min_speedup)
            result.passes, result.verdict = verdict.passed, verdict.line
        results.append(result)
    measured = [r for r in results if r.error is None]
    for i in pareto_front([(r.speedup or 0.0, r.accuracy or 0.0) for r in measured]):
        measured[i].pareto = True
    passing = [r for r in measured if r.passes]
    best = max(passing, key=lambda r: (r.speedup or 0.0, r.accuracy or 0.0), default=None)
    if best is not None:
        best.recommended = True
    min_accuracy = None
    if ref_acc is not None and max_accuracy_drop is not None:
        min_accuracy = ref_acc - max_accuracy_drop
    elif kind == "sqnr":
        min_accuracy = min_sqnr_db
    return SweepReport(model, out_dir, kind, ok[0]["description"] if ok else "n/a", ref_acc, results,
                       ", ".join(parts) or "none", min_accuracy, min_speedup, best.name if best else None, gated)


def _load_cache(path: Path, key: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    result = doc.get("result") if isinstance(doc, dict) and doc.get("key") == key else None
    if not isinstance(result, dict) or not Path(result.get("path") or "").is_file():
        return None
    return result


def _save_cache(path: Path, key: str, result: dict[str, Any]) -> None:
    row = {k: v for k, v in result.items() if k != "cached"}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "result": _finite(row)}, indent=2, sort_keys=True))
    os.replace(tmp, path)


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def step(self, description: str) -> None:
        logger.debug("sweep: %s", description)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=description)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
