"""Latency, throughput, size and peak memory of one or more models on onnxruntime CPU.

Models are measured interleaved (one run of each per round), so drift on a shared machine hits
them all alike, and each is compared with the first (the reference). Sessions use
``ORT_ENABLE_ALL``, as deployed. Peak memory is measured in a fresh subprocess per model (peak RSS
after creating the session and running once, minus the peak after the imports), because a session
in this process would share its allocator and imports with everything else.

An acceptance gate (:func:`gate`) turns the figures into a pass/fail verdict for CI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OptionError, UserError, first_line
from onnxq.ir.io import external_tensors
from onnxq.runtime import Feeds, ort_dtype, random_array, session_bytes, session_options

#: Defaults: warm-up runs per model, then rounds until the time budget or the run cap is reached.
WARMUP = 5
MIN_RUNS = 20
MAX_RUNS = 2000
BUDGET_S = 3.0


class BenchError(UserError):
    """A model cannot be benchmarked (onnxruntime refuses it, or the inputs do not fit it)."""


def session(path: str | os.PathLike[str] | bytes | ir.Model, *, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session as deployed: all graph optimizations, ``threads`` intra-op threads.

    An in-memory model's lazy external weights are read from their folder
    (:func:`onnxq.runtime.session_options`), never from the working directory.
    """
    folder: str | None = None
    if isinstance(path, ir.Model):
        source, folder = session_bytes(path)
    else:
        source = path if isinstance(path, bytes) else os.fspath(path)
    opts = session_options(optimize=True, threads=threads, external_folder=folder)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  # onnxruntime raises its own exception types
        where = "model" if isinstance(path, (bytes, ir.Model)) else str(path)
        raise BenchError(f"{where}: onnxruntime cannot load it: {first_line(e)}") from None


def interleaved_times(
    runners: Sequence[Callable[[], object]],
    *,
    warmup: int = WARMUP,
    runs: int | None = None,
    min_runs: int = MIN_RUNS,
    max_runs: int = MAX_RUNS,
    budget_s: float = BUDGET_S,
) -> list[list[float]]:
    """Seconds per run of each runner, measured round-robin.

    Args:
        runners: Zero-argument callables, one per model.
        warmup: Untimed runs of each before measuring.
        runs: Exactly this many timed runs each; ``None`` = adaptive: at least ``min_runs``, then
            more until ``budget_s`` seconds of timed runs or ``max_runs``.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    start = time.perf_counter()
    rounds = 0
    while True:
        if runs is not None:
            if rounds >= runs:
                break
        elif rounds >= max_runs or (rounds >= min_runs and time.perf_counter() - start >= budget_s):
            break
        # NOTE: alternate the order each round, so neither model always runs on a warmer cache.
        order = range(len(runners)) if rounds % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            t0 = time.perf_counter()
            runners[i]()
            times[i].append(time.perf_counter() - t0)
        rounds += 1
    return times


@dataclasses.dataclass(frozen=True)
class Latency:
    """Latency percentiles (milliseconds) of one model at one thread count."""

    threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    #: Samples (leading dimension of the first input) per second at the median latency.
    throughput: float
    #: The reference's p50 divided by this model's p50 (> 1: faster than the reference).
    speedup: float = 1.0
    #: Samples per run (leading dimension of the first input).
    batch: int = 1

    @classmethod
    def of(cls, seconds: Sequence[float], *, threads: int, batch: int) -> Latency:
        ms = np.asarray(seconds) * 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(threads, len(ms), p50, p90, p99, float(ms.mean()), batch * 1e3 / p50 if p50 > 0 else math.inf,
                   batch=batch)


@dataclasses.dataclass
class ModelBench:
    """Figures for one model."""

    path: str
    size_bytes: int
    latency: list[Latency]
    peak_memory_bytes: int | None = None
    #: This model's size divided by the reference's.
    size_ratio: float = 1.0


@dataclasses.dataclass
class BenchReport:
    """The result of :func:`bench`; the first model is the reference."""

    models: list[ModelBench]
    threads: list[int]
    batch: int
    inputs: str
    #: Batch sizes measured (``[batch]`` when the inputs were used as given).
    batches: list[int] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.models[0].path if self.models else None,
            "threads": self.threads,
            "batch": self.batch,
            "batches": self.batches or [self.batch],
            "inputs": self.inputs,
            "models": [dataclasses.asdict(m) for m in self.models],
        }

    def lines(self) -> list[str]:
        sizes = f"batches {', '.join(map(str, self.batches))}" if self.batches else f"batch {self.batch}"
        out = [f"inputs: {self.inputs} ({sizes}); first model is the reference"]
        for m in self.models:
            mem = f", peak memory {m.peak_memory_bytes / 2**20:.1f} MiB" if m.peak_memory_bytes is not None else ""
            ratio = f" ({m.size_ratio:.2f}x)" if m is not self.models[0] else ""
            out.append(f"{m.path}: {m.size_bytes / 1e6:.3f} MB{ratio}{mem}")
            for lat in m.latency:
                speed = f", {lat.speedup:.2f}x vs reference" if m is not self.models[0] else ""
                out.append(f"  {lat.threads} thread{'s' if lat.threads > 1 else ''}, batch {lat.batch}: "
                           f"p50 {lat.p50_ms:.3f} ms, "
                           f"p90 {lat.p90_ms:.3f}, p99 {lat.p99_ms:.3f} ({lat.runs} runs), "
                           f"{lat.throughput:,.1f} samples/s{speed}")
        return out


def model_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk: the model file plus the external-data files it references."""
    path = Path(path)
    total = path.stat().st_size
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  # protobuf raises assorted types on bad files
        raise BenchError(f"{path}: not a valid ONNX model ({first_line(e)})") from None
    files = set()
    for tensor, _ in external_tensors(proto):
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location:
            files.add(location)
    for name in sorted(files):
        data = path.parent / name
        if data.is_file():
            total += data.stat().st_size
    return total


def feeds_for(sess: ort.InferenceSession, inputs: Mapping[str, np.ndarray] | None, *, where: str) -> Feeds:
    """The feeds ``sess`` takes: from ``inputs`` (extra arrays dropped) or generated (seed 0, dims 1)."""
    feeds: Feeds = {}
    rng = np.random.default_rng(0)
    for arg in sess.get_inputs():
        if inputs is not None:
            if arg.name not in inputs:
                raise BenchError(f"{where}: inputs lack '{arg.name}' (have: {', '.join(sorted(inputs))})")
            feeds[arg.name] = np.asarray(inputs[arg.name])
            continue
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        try:
            feeds[arg.name] = random_array(shape, ort_dtype(arg.type), rng, what=f"input '{arg.name}'")
        except OptionError:
            raise BenchError(f"{where}: input '{arg.name}' has type {arg.type}; supply --inputs") from None
    return feeds


def _batch(feeds: Feeds) -> int:
    for value in feeds.values():
        if value.ndim:
            return int(value.shape[0])
    return 1


_MEMORY_SCRIPT = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort
from onnxq.validation.bench import feeds_for, session


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


inputs = None
if sys.argv[3]:
    with np.load(sys.argv[3]) as data:
        inputs = {k: data[k] for k in data.files}
# NOTE: writing 5 to clear_refs resets the peak (VmHWM) to the current RSS, so the imports'
# own peak does not hide a small session's; without it, fall back to ru_maxrss.
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, key = status("VmRSS"), "VmHWM"
except OSError:
    before, key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
sess = session(sys.argv[1], threads=int(sys.argv[2]))
feeds = feeds_for(sess, inputs, where=sys.argv[1])
sess.run(None, feeds)
after = status(key) if key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": max(after - before, 0)}))
"""


def peak_memory(path: str | os.PathLike[str], *, threads: int = 1, inputs: str | os.PathLike[str] | None = None,
                timeout_s: float = 300.0) -> int | None:
    """Peak RSS (bytes) a session adds: created and run once in a fresh Python process.

    Returns ``None`` where the platform has no ``resource`` module or the process fails.
    """
    if sys.platform == "win32":
        return None
    npz = ""
    if inputs is not None:
        npz = os.fspath(inputs)
        if Path(npz).is_dir():
            return None  # NOTE: folders of .npy are read in-process only; the figure is skipped.
    try:
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, os.fspath(path), str(threads), npz],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        kib = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"]
    except (ValueError, KeyError, IndexError):
        return None
    # NOTE: ru_maxrss is in KiB on Linux, bytes on macOS.
    return int(kib) if sys.platform == "darwin" else int(kib) * 1024


def bench(
    models: Sequence[str | os.PathLike[str]],
    *,
    threads: Sequence[int] = (1,),
    runs: int | None = None,
    warmup: int = WARMUP,
    inputs: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    budget_s: float = BUDGET_S,
    memory: bool = True,
    batches: Sequence[int] | None = None,
) -> BenchReport:
    """Measures the models interleaved; the first is the reference for the ratios.

    Args:
        models: .onnx files.
        threads: Intra-op thread counts to measure at.
        runs: Timed runs per model and thread count; ``None`` = adaptive within ``budget_s``.
        warmup: Untimed runs per model before measuring.
        inputs: An .npz file (keys = input names; extra arrays ignored), a folder of ``<input>.npy``,
            or feeds; default: generated inputs with symbolic dimensions set to 1.
        budget_s: Time budget of the timed runs per thread count (adaptive mode).
        memory: Measure each session's peak memory in a subprocess.
        batches: Batch sizes to measure at: the inputs' leading axis is cut or repeated to each size
            (inputs whose first dimension is fixed must already have it). ``None``: inputs as given.

    Raises:
        BenchError: A model cannot be loaded, or the inputs do not fit it.
        OptionError: Bad thread counts or run counts.
    """
    if not models:
        raise OptionError("bench needs at least one model")
    if not threads or any(t < 1 for t in threads):
        raise OptionError(f"--threads must be positive integers, got {list(threads)}")
    if runs is not None and runs < 1:
        raise OptionError(f"--runs must be at least 1, got {runs}")
    if batches is not None and (not batches or any(b < 1 for b in batches)):
        raise OptionError(f"--batch must be positive integers, got {list(batches)}")
    if warmup < 0:
        raise OptionError(f"--warmup must not be negative, got {warmup}")
    paths = [Path(m) for m in models]
    for path in paths:
        if not path.is_file():
            raise BenchError(f"{path}: no such file")
    given: Mapping[str, np.ndarray] | None
    if inputs is None or isinstance(inputs, Mapping):
        given = inputs
        described = "generated (seed 0, symbolic dims 1)" if inputs is None else "given feeds"
    else:
        from onnxq.runtime import load_inputs

        given = load_inputs(inputs)
        described = os.fspath(inputs)
    sizes = [model_size(p) for p in paths]
    results = [ModelBench(os.fspath(p), size, [], size_ratio=size / sizes[0] if sizes[0] else math.inf)
               for p, size in zip(paths, sizes, strict=True)]
    batch = 1
    for n in threads:
        sessions = [session(p, threads=n) for p in paths]
        base = [feeds_for(s, given, where=os.fspath(p)) for s, p in zip(sessions, paths, strict=True)]
        batch_sizes: list[int | None] = list(batches) if batches else [None]
        for size in batch_sizes:
            feeds = [f if size is None else _rebatch(s, f, size, where=os.fspath(p))
                     for s, f, p in zip(sessions, base, paths, strict=True)]
            batch = _batch(feeds[0])
            runners = [_runner(s, f, os.fspath(p)) for s, f, p in zip(sessions, feeds, paths, strict=True)]
            times = interleaved_times(runners, warmup=warmup, runs=runs, budget_s=budget_s)
            ref = None
            for result, seconds, f in zip(results, times, feeds, strict=True):
                lat = Latency.of(seconds, threads=n, batch=_batch(f))
                ref = ref or lat
                result.latency.append(dataclasses.replace(
                    lat, speedup=ref.p50_ms / lat.p50_ms if lat.p50_ms else math.inf))
        del sessions
    if memory:
        npz = None if inputs is None or isinstance(inputs, Mapping) else inputs
        for result in results:
            result.peak_memory_bytes = peak_memory(result.path, threads=threads[0], inputs=npz)
    return BenchReport(results, list(threads), batch, described, list(batches or []))


def _rebatch(sess: ort.InferenceSession, feeds: Feeds, size: int, *, where: str) -> Feeds:
    """The feeds with their leading axis cut or repeated to ``size`` rows."""
    out: Feeds = {}
    for arg in sess.get_inputs():
        value = feeds[arg.name]
        first = arg.shape[0] if arg.shape else None
        if value.ndim == 0:
            out[arg.name] = value
        elif isinstance(first, int) and first > 0:
            if first != size:
                raise BenchError(f"{where}: input '{arg.name}' has a fixed batch of {first}; cannot run batch {size}")
            out[arg.name] = value
        else:
            reps = -(-size // max(value.shape[0], 1))
            out[arg.name] = np.concatenate([value] * reps, axis=0)[:size] if value.shape[0] else value
    return out


def _runner(sess: ort.InferenceSession, feeds: Feeds, where: str) -> Callable[[], object]:
    try:
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001  # onnxruntime raises its own exception types
        raise BenchError(f"{where}: cannot run on these inputs: {first_line(e)}") from None
    return lambda: sess.run(None, feeds)


# --- acceptance gate ----------------------------------------------------------------------
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes from ``1000000``, ``5MB``, ``2.5 MiB``, ``300kb``...

    Raises:
        OptionError: Not a size.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise OptionError(f"--max-size {text!r}: expected bytes or a size such as 5MB or 2.5MiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Pass/fail of an acceptance gate, with one line saying why."""

    passed: bool
    line: str
    failures: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "line": self.line, "failures": list(self.failures)}


def gate(report: BenchReport, *, min_speedup: float | None = None, max_size: int | None = None) -> Verdict:
    """Checks the candidates (every model after the reference; the only model if there is one).

    ``min_speedup`` applies to the p50 speedup over the reference at every thread count measured;
    ``max_size`` to the size on disk in bytes.

    Raises:
        OptionError: ``min_speedup`` with a single model (nothing to compare with).
    """
    if min_speedup is not None and len(report.models) < 2:
        raise OptionError("--min-speedup needs a reference and a candidate: give two models or more")
    candidates = report.models[1:] or report.models
    failures, passes = [], []
    for m in candidates:
        if min_speedup is not None:
            for lat in m.latency:
                text = f"{Path(m.path).name} speedup {lat.speedup:.2f}x at {lat.threads} thread(s), batch {lat.batch}"
                if lat.speedup < min_speedup:
                    failures.append(f"{text} < {min_speedup:g}x")
                else:
                    passes.append(f"{text} >= {min_speedup:g}x")
        if max_size is not None:
            text = f"{Path(m.path).name} size {m.size_bytes:,} B"
            if m.size_bytes > max_size:
                failures.append(f"{text} > {max_size:,} B")
            else:
                passes.append(f"{text} <= {max_size:,} B")
    if failures:
        return Verdict(False, "FAIL: " + "; ".join(failures), tuple(failures))
    return Verdict(True, "PASS: " + ("; ".join(passes) or "no criteria given"))
