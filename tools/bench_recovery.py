"""Recovery table: onnxq's accuracy recovery beside onnxruntime, NNCF and AIMET on the third-party dev set.

One row per (model, method) over the models of ``tools/thirdparty.py`` (all ten, or ``--models``):
fidelity of the INT8 model to FP32 on the eval samples, with the measure that fits each output
kind (``class_scores``: top-1 agreement; ``ctc_sequence``: whole-sequence agreement after greedy
CTC decoding; both excuse FP32's own ties as the self-check does; the others: SQNR dB and cosine; a
multi-output model reports its worst output),
speed-up over FP32 at 1 thread (interleaved medians, ORT_ENABLE_ALL, with a bootstrap 95%
interval: "within noise" when it holds 1.0), the tool's wall time and peak RSS (each tool runs
in its own subprocess under ``/usr/bin/time -f %M``), and
whether the result is valid (``onnx.checker`` full check and onnxruntime loads it).

Methods (``--methods`` picks some):

- ``onnxq-plain``: ``onnxq quantize --no-guard`` (the plain command as it was);
- ``onnxq-cle`` / ``onnxq-sq`` / ``onnxq-bc`` / ``onnxq-ada``: one recovery pass alone through the
  Python API, ``quantize(model, calib, recovery=("cross-layer-equalization",))`` /
  ``("smooth-quant",)`` / ``("correct-bias",)`` / ``("adaround",)`` (no guard);
- ``onnxq-guard``: ``onnxq quantize`` as shipped (the guard is on by default); the rung it kept;
- ``ort-static``: ``onnxruntime.quantization.quantize_static``, QDQ, per-channel, MinMax, u8
  activations and s8 weights, ``reduce_range`` on AVX2 CPUs without VNNI; no pre-processing;
- ``nncf`` / ``nncf-ac``: ``nncf.quantize`` (default preset) and
  ``nncf.quantize_with_accuracy_control`` (max_drop 0.01 absolute, validated on the calibration
  feeds by agreement for decision outputs and cosine for the others, worst output);
- ``aimet-cle`` / ``aimet-adaround``: AIMET-ONNX cross-layer equalization, then min/max
  encodings, or AdaRound (``--aimet-iterations`` per layer) before them; exported as ONNX QDQ.

NNCF and AIMET are never installed into the environment: ``pip install --target`` into their
own folders (``--nncf-path``, ``--aimet-path``), on ``PYTHONPATH`` of their subprocess only,
with the dependencies the environment already has removed so that onnx, onnxruntime and numpy
stay the environment's. Usage::

    python tools/bench_recovery.py [--models fer_emotion,ppocr_cls] [--methods onnxq-plain,nncf]
        [--out tools/results/recovery.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # NOTE: tools/ is a folder of scripts, not installed

import benchlib  # noqa: E402
import thirdparty  # noqa: E402

#: Method -> (what it is, subprocess timeout in seconds).
METHODS: dict[str, tuple[str, float]] = {
    "onnxq-plain": ("onnxq quantize --no-guard", 600),
    "onnxq-cle": ("onnxq API, recovery=(cross-layer-equalization,)", 600),
    "onnxq-sq": ("onnxq API, recovery=(smooth-quant,)", 600),
    "onnxq-bc": ("onnxq API, recovery=(correct-bias,)", 600),
    "onnxq-ada": ("onnxq API, recovery=(adaround,)", 600),
    "onnxq-guard": ("onnxq quantize (guard on, default)", 900),
    "ort-static": ("onnxruntime quantize_static QDQ per-channel MinMax u8/s8", 600),
    "nncf": ("nncf.quantize (default preset)", 600),
    "nncf-ac": ("nncf.quantize_with_accuracy_control (max_drop 0.01)", 600),
    "aimet-cle": ("AIMET-ONNX CLE + min/max", 600),
    "aimet-adaround": ("AIMET-ONNX CLE + AdaRound", 300),
}
#: AdaRound on 2 CPU cores takes about 25 ms an iteration and layer: 10000 (AIMET's advice) would
#: take hours even on the smallest model, so fewer, on at most this many samples.
ADAROUND_ITERATIONS = 200
ADAROUND_SAMPLES = 64
RECOVERY = {"onnxq-cle": "cross-layer-equalization", "onnxq-sq": "smooth-quant", "onnxq-bc": "correct-bias",
            "onnxq-ada": "adaround"}
AGREEMENT_KINDS = ("class_scores", "ctc_sequence")
NNCF_PATH = Path("/tmp/nncf_env")
AIMET_PATH = Path("/tmp/aimet_env")
AIMET_DEPS_PATH = Path("/tmp/aimet_env_deps")
DEFAULT_OUT = benchlib.RESULTS / "recovery.md"


# --- pure helpers ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OutputScore:
    """Fidelity of one output over the eval samples."""

    name: str
    kind: str
    sqnr_db: float
    cosine: float
    #: Top-1 (class scores) or whole-sequence (CTC) agreement; None for the other kinds.
    agreement: float | None = None

    @property
    def measure(self) -> str:
        if self.kind == "class_scores":
            return f"top-1 {self.agreement:.1%}"
        if self.kind == "ctc_sequence":
            return f"seq {self.agreement:.1%}"
        return f"{_db(self.sqnr_db)} dB"


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"


def cosine(refs: Sequence[np.ndarray], gots: Sequence[np.ndarray]) -> float:
    """Cosine similarity of all samples raveled together (1.0 for two zero signals)."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in gots])
    norm = float(np.linalg.norm(ref) * np.linalg.norm(got))
    if not norm:
        return 1.0 if not ref.any() and not got.any() else 0.0
    return float(ref @ got / norm)


def score_output(name: str, kind: str, refs: Sequence[np.ndarray], gots: Sequence[np.ndarray]) -> OutputScore:
    """The measure that fits ``kind`` (manifest kinds of ``tools/thirdparty.py``), plus SQNR and cosine."""
    from onnxq.validation.output_kinds import sequence_agreement, top1_agreement
    from onnxq.validation.self_check import sqnr_db

    if any(np.shape(r) != np.shape(g) for r, g in zip(refs, gots, strict=True)):
        return OutputScore(name, kind, -math.inf, 0.0, 0.0 if kind in AGREEMENT_KINDS else None)
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in gots])
    if not np.isfinite(got).all():
        return OutputScore(name, kind, -math.inf, 0.0, 0.0 if kind in AGREEMENT_KINDS else None)
    agreement = None
    if kind == "class_scores":
        agreement = top1_agreement(refs, gots)
    elif kind == "ctc_sequence":
        agreement = sequence_agreement(refs, gots)
    return OutputScore(name, kind, sqnr_db(ref, got), cosine(refs, gots), agreement)


def worst(scores: Sequence[OutputScore]) -> OutputScore:
    """The least faithful output: lowest agreement among decision outputs, else lowest SQNR."""
    decisions = [s for s in scores if s.agreement is not None]
    if decisions:
        return min(decisions, key=lambda s: (s.agreement, s.sqnr_db))
    return min(scores, key=lambda s: s.sqnr_db)


def ac_metric(kinds: Sequence[str], refs: Sequence[Sequence[np.ndarray]],
              gots: Sequence[Sequence[np.ndarray]]) -> float:
    """Validation metric of NNCF's accuracy control, 1.0 for FP32: the worst output's agreement
    (decision outputs) or cosine (the others). ``refs[i][k]``: output ``k`` of sample ``i``."""
    values = []
    for k, kind in enumerate(kinds):
        score = score_output(str(k), kind, [r[k] for r in refs], [g[k] for g in gots])
        values.append(score.agreement if score.agreement is not None else score.cosine)
    return float(min(values))


def speedup_interval(base: Sequence[float], times: Sequence[float], *, resamples: int = 1000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Median(base) / median(times) with a bootstrap 95% interval over the interleaved rounds.

    Rounds are resampled in pairs (round ``i`` of both), since drift on a shared machine hits
    both runs of a round alike.
    """
    a = np.asarray(base, np.float64)
    b = np.asarray(times, np.float64)
    point = float(np.median(a) / np.median(b))
    n = min(len(a), len(b))
    if n < 3:
        return point, point, point
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(resamples, n))
    ratios = np.median(a[:n][index], axis=1) / np.median(b[:n][index], axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return point, float(low), float(high)


def speed_text(point: float, low: float, high: float) -> str:
    """``1.52x``, or ``0.98x (within noise)`` when the interval holds 1.0."""
    return f"{point:.2f}x" + (" (within noise)" if low <= 1.0 <= high else "")


def parse_list(text: str | None, known: Sequence[str], what: str) -> list[str]:
    """Comma- (or space-) separated names, checked against ``known``; all of them when empty."""
    if not text:
        return list(known)
    names = [n for n in text.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def reduce_range_for(cpu: str) -> bool:
    """onnxruntime's advice: 7-bit weights (``reduce_range``) on x86 AVX2 without VNNI."""
    return cpu == "avx2"


def error_tail(stderr: str, lines: int = 6) -> str:
    """The last lines of a traceback (or of any error output), for the report."""
    text = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if "Traceback (most recent call last):" in stderr:
        start = max(i for i, ln in enumerate(text) if ln.startswith("Traceback"))
        text = text[start:]
    return "\n".join(text[-lines:])


# --- running a tool -------------------------------------------------------------------------
@dataclasses.dataclass
class ToolRun:
    returncode: int | None
    wall_s: float
    rss_mib: float | None
    timed_out: bool
    stdout: str
    stderr: str


def run_tool(command: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> ToolRun:
    """Runs ``command`` in its own process group; kills the group after ``timeout_s``.

    Peak RSS is ``/usr/bin/time -f %M`` of the command (its ``ru_maxrss``, measured by ``time``,
    a small process: ``wait4`` here would count this big process's pages, which a child holds
    between fork and exec); for a command killed at the timeout, the largest ``VmHWM`` of its
    processes, polled until the kill.
    """
    use_time = os.access(benchlib.GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        rss_file = Path(tmp) / "rss"
        full = [benchlib.GNU_TIME, "-f", "%M", "-o", str(rss_file), *command] if use_time else list(command)
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen([str(c) for c in full], stdout=out, stderr=err,
                                    env=dict(env) if env else None, cwd=cwd, start_new_session=True)
            timed_out = False
            hwm_kib = 0.0
            try:
                while proc.poll() is None:
                    hwm_kib = max(hwm_kib, _tree_hwm_kib(proc.pid))
                    if time.perf_counter() - start > timeout_s:
                        timed_out = True
                        break
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            wall = time.perf_counter() - start
            rss_kib = hwm_kib
            if not timed_out and rss_file.is_file():
                try:
                    rss_kib = float(rss_file.read_text().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    pass
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    return ToolRun(None if timed_out else proc.returncode, wall, rss_kib / 1024 if rss_kib else None, timed_out,
                   stdout, stderr)


def _tree_hwm_kib(pid: int) -> float:
    """The largest ``VmHWM`` (peak RSS of its own memory map) among ``pid`` and its descendants."""
    best = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                best = max(best, float(line.split()[1]))
        stack.extend(int(c) for c in children)
    return best


def _isolated_env(paths: Sequence[Path]) -> dict[str, str]:
    env = dict(os.environ)
    extra = os.pathsep.join(str(p) for p in paths)
    env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def tool_command(method: str, name: str, files: Mapping[str, Path], out: Path,
                 args: argparse.Namespace) -> tuple[list[str], dict[str, str] | None]:
    """The subprocess of ``method`` (and its environment, None = this one's)."""
    model, calib = str(files["onnx"]), str(files["calib"])
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    if method == "onnxq-plain":
        return benchlib.onnxq_command("quantize", model, "-o", str(out), "--calib", calib, "--no-guard", "--json"), None
    if method == "onnxq-guard":
        return benchlib.onnxq_command("quantize", model, "-o", str(out), "--calib", calib, "--json"), None
    if method in RECOVERY:
        return [*worker, "onnxq", name, str(out), RECOVERY[method]], None
    if method == "ort-static":
        return [*worker, "ort", name, str(out)], None
    if method in ("nncf", "nncf-ac"):
        return [*worker, method, name, str(out)], _isolated_env([args.nncf_path])
    if method in ("aimet-cle", "aimet-adaround"):
        return ([*worker, method, name, str(out), str(args.aimet_iterations)],
                _isolated_env([args.aimet_path, args.aimet_deps_path]))
    raise ValueError(method)


# --- workers (run in the subprocesses) ------------------------------------------------------
def _fp32_outputs(name: str, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    from onnxq.validation.bench import session

    sess = session(thirdparty.paths(name)["onnx"], threads=1)
    return [sess.run(None, dict(f)) for f in feeds]


def worker(kind: str, name: str, out: str, extra: Sequence[str]) -> None:
    files = thirdparty.paths(name)
    model = str(files["onnx"])
    if kind == "onnxq":
        from onnxq.ir.io import load_model, save_model
        from onnxq.quantization.quantize import quantize

        passes = tuple(extra)
        result, report = quantize(load_model(model), str(files["calib"]), recovery=passes)
        save_model(result, out)
        stats = {k: v for k, v in report.stats.items() if k.split(".")[0] in passes}
        print(json.dumps({"stats": stats, "report": report.to_json()}, default=str))
        return
    feeds = thirdparty.load_feeds(name, "calib")
    if kind == "ort":
        from onnxruntime import quantization as q

        from onnxq.targets.ort_cpu import cpu_kind

        class Reader(q.CalibrationDataReader):
            def __init__(self) -> None:
                self.samples = iter(feeds)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.samples, None)

        q.quantize_static(model, out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          reduce_range=reduce_range_for(cpu_kind()), activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax)
        return
    if kind in ("nncf", "nncf-ac"):
        import nncf
        import onnx
        import onnxruntime as ort

        proto = onnx.load(model)
        calibration = nncf.Dataset(feeds)
        if kind == "nncf":
            result = nncf.quantize(proto, calibration)
        else:
            kinds = [o["kind"] for o in thirdparty.load_manifest()[name]["outputs"]]
            refs = _fp32_outputs(name, feeds)
            items = list(enumerate(feeds))

            def validate(candidate: Any, data: Any) -> tuple[float, list[float]]:
                items = list(data)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                opts.log_severity_level = 3
                try:
                    sess = ort.InferenceSession(candidate.SerializeToString(), opts,
                                                providers=["CPUExecutionProvider"])
                    gots = [sess.run(None, feed) for _, feed in items]
                except Exception:  # noqa: BLE001
                    # NOTE: a model onnxruntime cannot run (NNCF's per-channel activation scales
                    # before a depthwise QLinearConv) is as unfaithful as can be: NNCF reverts more
                    return 0.0, [0.0] * len(items)
                mine = [refs[i] for i, _ in items]
                per_item = [ac_metric(kinds, [r], [g]) for r, g in zip(mine, gots, strict=True)]
                return ac_metric(kinds, mine, gots), per_item

            result = nncf.quantize_with_accuracy_control(
                proto, nncf.Dataset(items, lambda item: item[1]), nncf.Dataset(items), validate,
                max_drop=0.01, drop_type=nncf.DropType.ABSOLUTE)
        onnx.save(result, out)
        print(json.dumps({"nncf": nncf.__version__}))
        return
    if kind in ("aimet-cle", "aimet-adaround"):
        import onnx
        from aimet_onnx.cross_layer_equalization import equalize_model
        from aimet_onnx.quantsim import QuantizationSimModel

        proto = onnx.load(model)
        # NOTE: AIMET draws dummy inputs from the declared input shapes (ppocr_cls declares literal
        # -1 dims): declare the shapes the samples have, as an onnxsim pass before AIMET would
        shapes = {i["name"]: i["shape"] for i in thirdparty.load_manifest()[name]["inputs"]}
        for value in proto.graph.input:
            if value.name in shapes and value.type.tensor_type.HasField("shape"):
                for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=True):
                    dim.Clear()
                    dim.dim_value = size
        equalize_model(proto)
        sim = QuantizationSimModel(proto, param_type="int8", activation_type="int8", config_file="default",
                                   dummy_input=dict(feeds[0]), providers=["CPUExecutionProvider"])
        if kind == "aimet-adaround":
            from aimet_onnx import apply_adaround

            apply_adaround(sim, feeds[:ADAROUND_SAMPLES], num_iterations=int(extra[0]))
        sim.compute_encodings(feeds)
        onnx.save(sim.to_onnx_qdq(prequantize_constants=True, force_activation_as="unsigned"), out)
        print(json.dumps({"aimet_onnx": importlib.metadata.version("aimet-onnx")}))
        return
    raise SystemExit(f"unknown worker {kind}")


# --- measuring results ----------------------------------------------------------------------
def validity(path: Path) -> tuple[bool, str]:
    """(onnx.checker full check passes and onnxruntime loads it, why not)."""
    import onnx

    from onnxq.validation.bench import session

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001  # any refusal is what is measured
        return False, f"checker: {str(e).strip().splitlines()[0][:120]}"
    try:
        session(path, threads=1)
    except Exception as e:  # noqa: BLE001
        return False, f"onnxruntime: {str(e).strip().splitlines()[0][:120]}"
    return True, ""


def loads(path: Path) -> bool:
    from onnxq.validation.bench import session

    try:
        session(path, threads=1)
    except Exception:  # noqa: BLE001
        return False
    return True


def evaluate(path: Path, outputs: Sequence[Mapping[str, Any]], feeds: Sequence[Mapping[str, np.ndarray]],
             refs: Sequence[Sequence[np.ndarray]]) -> list[OutputScore]:
    from onnxq.validation.bench import session

    sess = session(path, threads=1)
    names = [o["name"] for o in outputs]
    gots = [sess.run(names, dict(f)) for f in feeds]
    return [score_output(o["name"], o["kind"], [r[k] for r in refs], [g[k] for g in gots])
            for k, o in enumerate(outputs)]


def latencies(paths: Mapping[str, Path], feed: Mapping[str, np.ndarray], *, budget_s: float,
              min_runs: int) -> dict[str, list[float]]:
    """Seconds per run of every model, interleaved (onnxq's ``interleaved_times``), 1 thread."""
    from onnxq.validation.bench import interleaved_times, session

    sessions = {label: session(path, threads=1) for label, path in paths.items()}
    runners: list[Callable[[], object]] = [lambda s=s: s.run(None, dict(feed)) for s in sessions.values()]
    times = interleaved_times(runners, warmup=3, min_runs=min_runs, budget_s=budget_s)
    return dict(zip(sessions, times, strict=True))


# --- one model ------------------------------------------------------------------------------
def bench_model(name: str, methods: Sequence[str], args: argparse.Namespace,
                crashes: list[str]) -> list[dict[str, Any]]:
    files = thirdparty.paths(name)
    info = thirdparty.load_manifest()[name]
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = [{"model": name, "method": "fp32", "path": files["onnx"], "wall_s": None,
                                   "rss_mib": None, "note": ""}]
    rows[0]["valid"], rows[0]["why"] = validity(files["onnx"])
    for method in methods:
        out = work / f"{method}.onnx"
        out.unlink(missing_ok=True)
        row: dict[str, Any] = {"model": name, "method": method, "path": out, "note": ""}
        rows.append(row)
        skip = _unavailable(method, args)
        if skip:
            row.update(wall_s=None, rss_mib=None, valid=None, why="", error=skip)
            continue
        command, env = tool_command(method, name, files, out, args)
        timeout = args.timeout.get(method, METHODS[method][1])
        print(f"  {name}/{method} ...", file=sys.stderr, flush=True)
        run = run_tool(command, timeout_s=timeout, env=env, cwd=work)
        row.update(wall_s=run.wall_s, rss_mib=run.rss_mib)
        (work / f"{method}.log").write_text(f"$ {' '.join(command)}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}")
        if run.timed_out:
            row.update(valid=None, why="", error=f"timeout after {timeout:.0f} s")
        elif run.returncode != 0 or not out.exists():
            tail = error_tail(run.stderr)
            row.update(valid=None, why="", error=f"exit {run.returncode}: {tail.splitlines()[-1][:150] if tail else '?'}")
            if method.startswith("onnxq"):
                crashes.append(f"{name}/{method} (exit {run.returncode}):\n{tail}")
        else:
            row["valid"], row["why"] = validity(out)
            row["note"] = "; ".join(x for x in (_note(method, run.stdout), _float_note(out)) if x)
        print(f"  {name}/{method}: {row.get('error') or ('valid' if row['valid'] else row['why'])} "
              f"({run.wall_s:.1f} s, {run.rss_mib:.0f} MiB) {row['note']}", file=sys.stderr, flush=True)

    feeds = thirdparty.load_feeds(name, "eval")
    outputs = info["outputs"]
    refs = _fp32_outputs(name, feeds)
    measurable = {}
    for row in rows:
        row["eval_n"] = len(feeds)
        if row.get("error") or not loads(row["path"]):
            continue
        try:
            row["scores"] = evaluate(row["path"], outputs, feeds, refs)
            measurable[row["method"]] = row["path"]
        except Exception as e:  # noqa: BLE001  # a model that fails on the eval samples is a result
            row["error"] = f"eval: {str(e).strip().splitlines()[0][:150]}"
    for row in rows[1:]:
        if row["method"].startswith("onnxq") and row.get("valid") is not None and (
                not row["valid"] or str(row.get("error", "")).startswith("eval")):
            crashes.append(f"{name}/{row['method']}: the result is wrong: {row.get('why') or row.get('error')}")
    times = latencies(measurable, feeds[0], budget_s=args.budget, min_runs=args.min_runs)
    for row in rows:
        if row["method"] in times:
            row["ms"] = 1000 * statistics.median(times[row["method"]])
            row["speed"] = speedup_interval(times["fp32"], times[row["method"]])
            row["runs"] = len(times[row["method"]])
    if not args.keep_models:
        for row in rows[1:]:
            Path(row["path"]).unlink(missing_ok=True)
    return rows


def _unavailable(method: str, args: argparse.Namespace) -> str:
    if method.startswith("nncf") and not (args.nncf_path / "nncf").is_dir():
        return f"NNCF not installed in {args.nncf_path}"
    if method.startswith("aimet") and not (args.aimet_path / "aimet_onnx").is_dir():
        return f"AIMET-ONNX not installed in {args.aimet_path}"
    return ""


def _note(method: str, stdout: str) -> str:
    """What the tool said about itself: the guard's rung, the recovery pass's statistics."""
    try:
        doc = json.loads(stdout) if method in ("onnxq-plain", "onnxq-guard") else json.loads(
            stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return ""
    if method == "onnxq-guard" and isinstance(doc.get("guard"), dict):
        guard = doc["guard"]
        rungs = "; ".join(f"{r['name']}: {_unnamed(r['fidelity'])}" + ("" if r.get("within_floor") else " (below)")
                          for r in guard.get("rungs", []))
        return (f"kept '{guard.get('chosen')}'" + ("" if guard.get("within_floor") else ", NOT within floor")
                + f" [{rungs}]")
    if method == "onnxq-guard":
        return "no guard in --json"
    if method in RECOVERY:
        stats = doc.get("stats", {})
        return ", ".join(f"{k.split('.', 1)[-1]}={_short(v)}" for k, v in stats.items()) or "pass changed nothing"
    return ""


def _float_note(path: Path) -> str:
    """``no Q/DQ left: float model`` when the result quantizes nothing (main graph and subgraphs)."""
    import onnx

    def count(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                      "DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger", "QLinearConv",
                                      "QLinearMatMul")
            for attr in node.attribute:
                total += sum(count(g) for g in ([attr.g] if attr.HasField("g") else list(attr.graphs)))
        return total

    try:
        return "" if count(onnx.load(str(path), load_external_data=False).graph) else "no Q/DQ left: float model"
    except Exception:  # noqa: BLE001
        return ""


def _unnamed(fidelity: str) -> str:
    """The guard's fidelity summary without output names (``out: top-1 90%`` -> ``top-1 90%``)."""
    return re.sub(r"(^|, )[^,]*?: (?=\S)", r"\1", fidelity)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and abs(value) >= 1e6 else str(value)


# --- report ---------------------------------------------------------------------------------
HEADERS = ["model", "method", "eval n", "fidelity (worst output)", "SQNR dB", "cosine", "ms 1t",
           "speed-up 1t", "tool s", "tool peak RSS MiB", "valid", "note"]


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for row in rows:
        scores = row.get("scores")
        w = worst(scores) if scores else None
        multi = scores is not None and len(scores) > 1
        fidelity = "-" if w is None else ("exact (reference)" if row["method"] == "fp32" else w.measure) + (
            f" [{w.name}]" if multi and row["method"] != "fp32" else "")
        speed = row.get("speed")
        valid = "-" if row.get("valid") is None else ("yes" if row["valid"] else "no")
        note = "; ".join(x for x in (row.get("error", ""), row.get("why", ""), row.get("note", "")) if x)
        out.append([
            row["model"], row["method"], row.get("eval_n", "-"), fidelity,
            "-" if w is None or row["method"] == "fp32" else _db(worst_sqnr(scores).sqnr_db),
            "-" if w is None or row["method"] == "fp32" else f"{min(s.cosine for s in scores):.5f}",
            f"{row['ms']:.3f}" if "ms" in row else "-",
            "1.00x (reference)" if row["method"] == "fp32" and speed else speed_text(*speed) if speed else "-",
            f"{row['wall_s']:.1f}" if row.get("wall_s") is not None else "-",
            f"{row['rss_mib']:.0f}" if row.get("rss_mib") is not None else "-",
            valid, note.replace("|", "/").replace("\n", " "),
        ])
    return out


def worst_sqnr(scores: Sequence[OutputScore]) -> OutputScore:
    return min(scores, key=lambda s: s.sqnr_db)


def header(args: argparse.Namespace, models: Sequence[str], methods: Sequence[str], aimet_note: str) -> list[str]:
    import onnxruntime as ort

    from onnxq.targets.ort_cpu import cpu_kind

    cpu = cpu_kind()
    versions = {d: _version(d) for d in ("onnxq", "onnx", "onnxruntime", "numpy")}
    lines = [
        "# Recovery table: onnxq recovery passes and guard vs onnxruntime, NNCF, AIMET-ONNX",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; CPU kind (onnxq cpu_kind: $ONNXQ_CPU, else detected): **{cpu}**; "
        f"onnxruntime {ort.__version__}; " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "onnxruntime"),
        f"- NNCF: {_isolated_version(args.nncf_path, 'nncf')}; AIMET-ONNX: {aimet_note}",
        f"- models: {', '.join(models)}; methods: {', '.join(methods)}",
        "- fidelity vs FP32 on the eval samples (eval n): class_scores = top-1 agreement, ctc_sequence = "
        "whole-sequence agreement after greedy CTC decoding (onnxq sequence_agreement), others = SQNR dB; "
        "multi-output models: the worst output [name]; SQNR / cosine columns: the worst output by SQNR, "
        "the lowest cosine",
        f"- speed-up: median FP32 / median INT8, onnxruntime ORT_ENABLE_ALL, 1 intra-op thread, batch 1 "
        f"(eval sample 0), interleaved rounds (onnxq interleaved_times, >= {args.min_runs} rounds, "
        f"{args.budget:.0f} s budget per model); 'within noise' = the bootstrap 95% interval of the "
        "ratio holds 1.0",
        "- tool s / peak RSS: the tool in its own subprocess, peak RSS by /usr/bin/time -f %M (a timed-out "
        "tool: the largest VmHWM of its processes until the kill); valid: onnx.checker "
        "full_check passes and onnxruntime loads the model",
        f"- ort-static: reduce_range={reduce_range_for(cpu)} (AVX2 without VNNI); onnxq holds back "
        "min(8, n/4) calibration samples for its self-check, the other tools calibrate on all",
        f"- aimet-adaround: {args.aimet_iterations} AdaRound iterations per layer (AIMET advises 10000; "
        f"about 25 ms each per layer here) on at most {ADAROUND_SAMPLES} calibration samples",
        "- nncf-ac validation metric: worst output's agreement (decision outputs) or cosine (others) "
        "on the calibration feeds, max_drop 0.01 absolute",
    ]
    if load := benchlib.busy_warning():
        lines.append(f"- {load}")
    return lines


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _isolated_version(path: Path, dist: str) -> str:
    found = sorted(path.glob(f"{dist.replace('-', '_')}-*.dist-info"))
    if not found:
        return f"not installed in {path}"
    return f"{found[-1].name.removesuffix('.dist-info').split('-')[1]} (pip --target {path}, PYTHONPATH of its subprocess)"


def aimet_status(path: Path) -> str:
    if not (path / "aimet_onnx").is_dir():
        return f"not installed in {path} (run: pip install --no-deps --target {path} aimet-onnx)"
    note = (f"{_isolated_version(path, 'aimet-onnx')}; no bias correction in aimet-onnx 2.x "
            "(aimet_onnx.bias_correction is gone), so rows are CLE and CLE + AdaRound")
    return note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=f"comma-separated (default all: {', '.join(thirdparty.MODELS)})")
    parser.add_argument("--methods", help=f"comma-separated (default all: {', '.join(METHODS)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file (default %(default)s)")
    parser.add_argument("--work", type=Path, default=benchlib.RESULTS / "recovery", help="quantized models, logs")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timed runs per model")
    parser.add_argument("--min-runs", type=int, default=15, help="least interleaved rounds per model")
    parser.add_argument("--aimet-iterations", type=int, default=ADAROUND_ITERATIONS, help="AdaRound iterations per layer")
    parser.add_argument("--nncf-path", type=Path, default=NNCF_PATH)
    parser.add_argument("--aimet-path", type=Path, default=AIMET_PATH)
    parser.add_argument("--aimet-deps-path", type=Path, default=AIMET_DEPS_PATH)
    parser.add_argument("--timeout", action="append", default=[], metavar="METHOD=SECONDS",
                        help="override a method's subprocess timeout (repeatable)")
    parser.add_argument("--keep-models", action="store_true", help="keep the quantized .onnx files")
    args = parser.parse_args(argv)
    if args.worker:
        kind, name, out, *extra = args.worker
        worker(kind, name, out, extra)
        return 0
    args.timeout = {k: float(v) for k, v in (t.split("=", 1) for t in args.timeout)}
    # NOTE: SIGTERM (kill PID) unwinds like Ctrl-C, so run_tool kills the tool it is waiting for
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    models = parse_list(args.models, list(thirdparty.MODELS), "models")
    methods = parse_list(args.methods, list(METHODS), "methods")
    import onnxruntime as ort

    from onnxq.targets.ort_cpu import cpu_kind

    print(f"CPU kind: {cpu_kind()}; onnxruntime {ort.__version__}", flush=True)
    aimet_note = aimet_status(args.aimet_path)
    rows: list[dict[str, Any]] = []
    crashes: list[str] = []
    started = time.perf_counter()
    for name in models:
        print(f"{name}:", file=sys.stderr, flush=True)
        rows.extend(bench_model(name, methods, args, crashes))
        _write(args, models, methods, aimet_note, rows, crashes, started, partial=name != models[-1])
    text = _write(args, models, methods, aimet_note, rows, crashes, started, partial=False)
    print(text)
    return 0


def _write(args: argparse.Namespace, models: Sequence[str], methods: Sequence[str], aimet_note: str,
           rows: Sequence[dict[str, Any]], crashes: Sequence[str], started: float, *, partial: bool) -> str:
    lines = header(args, models, methods, aimet_note)
    lines += ["", benchlib.markdown_table(HEADERS, table_rows(rows)), ""]
    if crashes:
        lines += ["## onnxq crashes and wrong results (last lines of each traceback)", ""]
        for crash in crashes:
            lines += ["```", crash, "```", ""]
    lines.append(f"{'partial: ' if partial else ''}{time.perf_counter() - started:.0f} s in all; "
                 f"command: python tools/bench_recovery.py" + "".join(
                     f" {flag}" for flag in _flags(args, models, methods)))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


def _flags(args: argparse.Namespace, models: Sequence[str], methods: Sequence[str]) -> list[str]:
    flags = []
    if list(models) != list(thirdparty.MODELS):
        flags.append(f"--models {','.join(models)}")
    if list(methods) != list(METHODS):
        flags.append(f"--methods {','.join(methods)}")
    if args.out != DEFAULT_OUT:
        flags.append(f"--out {args.out}")
    return flags


if __name__ == "__main__":
    sys.exit(main())
