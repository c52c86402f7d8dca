"""INT8 quantization, onnxq beside onnxruntime.quantization, in one run on this machine.

For every model (the zoo, plus the third-party models of ``tools/thirdparty.py`` when they are
available) it makes these variants, each tool in its own subprocess under ``/usr/bin/time -v``
(wall time and peak RSS), from the same calibration samples:

- ``fp32``: the model as built;
- ``ort-dynamic``: ``quantize_dynamic`` with its defaults;
- ``ort-static-{minmax,entropy,percentile}``: ``quantize_static`` in QDQ format, per-channel,
  its other defaults (s8s8 in onnxruntime 1.32);
- ``onnxq`` (``onnxq quantize`` with default options) and ``onnxq-{percentile,entropy,mse}``.

Then, for every valid variant: the zoo metric on the held-out split (third-party models: SQNR of
output 0 against FP32 on generated inputs, in dB), onnxruntime CPU latency (ORT_ENABLE_ALL, batch 1,
1 and 2 threads, median of interleaved rounds), size on disk. Ratios are against FP32 and against
``ort-static-minmax``. Usage::

    python tools/bench_quantize.py [--models digits_cnn resnet_digits ...] [--runs 40] [--quick]

Results go to ``tools/results/bench_quantize.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import benchlib  # noqa: E402

from onnxq.validation.bench import interleaved_times  # noqa: E402
from onnxq.validation.self_check import sqnr_db  # noqa: E402

ORT_METHODS = ("minmax", "entropy", "percentile")
ONNXQ_METHODS = ("percentile", "entropy", "mse")
#: Models whose FP32 latency is below this are reported but not held to the speed targets.
MIN_LATENCY_MS = 1.0


# --- worker: onnxruntime.quantization in a subprocess --------------------------------------
def ort_worker(kind: str, model: str, calib: str, output: str) -> None:
    from onnxruntime import quantization as q

    if kind == "dynamic":
        q.quantize_dynamic(model, output)
        return
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
              "percentile": q.CalibrationMethod.Percentile}[kind]

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(_calib_samples(calib))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    q.quantize_static(model, output, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      calibrate_method=method)


def _calib_samples(folder: str) -> list[dict[str, np.ndarray]]:
    samples = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as data:
            samples.append({k: data[k] for k in data.files})
    return samples


# --- data --------------------------------------------------------------------------------
def write_calib_folder(inputs: dict[str, np.ndarray], folder: Path, count: int) -> Path:
    """One .npz per sample (batch 1), the format both tools read."""
    folder.mkdir(parents=True, exist_ok=True)
    n = min(count, min(len(v) for v in inputs.values()))
    for i in range(n):
        np.savez(folder / f"{i:05d}.npz", **{k: v[i:i + 1] for k, v in inputs.items()})
    return folder


# --- latency -------------------------------------------------------------------------------
def latencies(paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """Median ms per variant over interleaved rounds (every variant runs once per round, order alternating)."""
    import onnxruntime as ort

    sessions = {}
    for label, path in paths.items():
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sessions[label] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    labels = list(sessions)
    runs_each = interleaved_times([lambda s=sessions[k]: s.run(None, feed) for k in labels], warmup=3, runs=runs)
    times = {label: [t * 1000 for t in ts] for label, ts in zip(labels, runs_each, strict=True)}
    return {label: statistics.median(t) for label, t in times.items()}


# --- one model -----------------------------------------------------------------------------
def bench_model(name: str, source: dict[str, Any], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    fp32 = Path(source["onnx"])
    calib = write_calib_folder(source["calib"], work / "calib", args.calib_samples)
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32, "wall_s": 0.0, "rss_mib": None}}
    jobs: list[tuple[str, list[str]]] = [
        ("ort-dynamic", [sys.executable, __file__, "--ort-worker", "dynamic", str(fp32), str(calib)]),
    ]
    for method in ORT_METHODS if not args.quick else ("minmax",):
        jobs.append((f"ort-static-{method}", [sys.executable, __file__, "--ort-worker", method, str(fp32), str(calib)]))
    jobs.append(("onnxq", benchlib.onnxq_command("quantize", str(fp32), "--calib", str(calib), "-q")))
    for method in ONNXQ_METHODS if not args.quick else ():
        jobs.append((f"onnxq-{method}", benchlib.onnxq_command(
            "quantize", str(fp32), "--calib", str(calib), "--method", method, "-q")))
    for label, command in jobs:
        out = work / f"{label}.onnx"
        out.unlink(missing_ok=True)
        command = [*command, "-o", str(out)] if "--ort-worker" not in command else [*command, str(out)]
        m = benchlib.measure(f"{name}/{label}", command)
        row: dict[str, Any] = {"path": out, "wall_s": m.wall_s, "rss_mib": m.max_rss_mib}
        if m.returncode != 0 or not out.exists():
            row["error"] = (m.stderr.strip().splitlines() or ["(no message)"])[-1][:200]
        else:
            row["error"] = _load_error(out)
        variants[label] = row
        print(f"  {name}/{label}: {'ok' if not row['error'] else row['error']} "
              f"({m.wall_s:.1f} s, {m.max_rss_mib:.0f} MiB)", file=sys.stderr)
    valid = {k: v["path"] for k, v in variants.items() if not v.get("error")}
    for label, path in valid.items():
        variants[label]["metric"] = source["metric"](path)
        variants[label]["size_bytes"] = path.stat().st_size
    feed = source["feed"]
    for threads in (1, 2):
        for label, ms in latencies(valid, feed, threads, args.runs).items():
            variants[label][f"ms_{threads}t"] = ms
    if source.get("batch_feed") is not None:
        # NOTE: batch 1 on these tiny models measures the fixed cost of a run; a batch of 64 shows
        # what the integer kernels do when there is compute to do.
        for label, ms in latencies(valid, source["batch_feed"], 1, max(6, args.runs // 3)).items():
            variants[label]["ms_b64"] = ms
    return {"variants": {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                         for k, v in variants.items()},
            "metric_name": source["metric_name"]}


def _load_error(path: Path) -> str | None:
    """Why onnxruntime (or the full checker) refuses the model; None when it is valid."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  # any refusal is the result being measured
        return f"invalid: {str(e).strip().splitlines()[0][:160]}"
    return None


# --- model sources ---------------------------------------------------------------------------
def zoo_source(name: str) -> dict[str, Any]:
    from models import zoo

    inputs, _ = zoo.load_eval(name)
    info = zoo.entry(name)
    return {
        "onnx": zoo.model_path(name),
        "calib": zoo.load_calib(name),
        "feed": {k: v[:1] for k, v in inputs.items()},
        "batch_feed": {k: v[:64] for k, v in inputs.items()} if _dynamic_batch(zoo.model_path(name)) else None,
        "metric": lambda path: zoo.evaluate(name, path),
        "metric_name": info["metric"]["name"],
    }


def _dynamic_batch(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [i.type.tensor_type.shape.dim[0] for i in graph.input if i.type.tensor_type.shape.dim]
    return bool(dims) and all(not d.HasField("dim_value") for d in dims)


def thirdparty_source(name: str) -> dict[str, Any]:
    import onnxruntime as ort
    import thirdparty  # tools/thirdparty.py

    path = thirdparty.fetch(name)
    with np.load(path.with_suffix(".calib.npz")) as data:
        calib = {k: data[k] for k in data.files}
    with np.load(path.with_suffix(".eval.npz")) as data:
        evals = {k: data[k] for k in data.files}
    ref_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    samples = [{k: v[i:i + 1] for k, v in evals.items()} for i in range(min(len(v) for v in evals.values()))]
    reference = [ref_sess.run(None, s)[0] for s in samples]

    def metric(candidate: Path) -> float:
        sess = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
        return float(np.mean([sqnr_db(r, sess.run(None, s)[0]) for r, s in zip(reference, samples, strict=True)]))

    return {"onnx": path, "calib": calib, "feed": samples[0], "metric": metric, "metric_name": "SQNR dB"}


# --- report ----------------------------------------------------------------------------------
def table(results: dict[str, Any]) -> str:
    headers = ["model", "variant", "metric", "drop", "ms 1t", "x fp32 1t", "ms 2t", "x fp32 2t",
               "x fp32 b64", "MB", "tool s", "tool MiB", "note"]
    rows = []
    for model, result in results.items():
        v = result["variants"]
        base = v["fp32"]
        for label, row in v.items():
            if row.get("error"):
                rows.append([model, label, "-", "-", "-", "-", "-", "-", "-", "-", f"{row['wall_s']:.1f}",
                             f"{row['rss_mib']:.0f}" if row.get("rss_mib") else "-", row["error"][:60]])
                continue
            drop = base["metric"] - row["metric"]
            fidelity = result["metric_name"] == "SQNR dB"
            rows.append([
                model, label, "-" if fidelity and label == "fp32" else f"{row['metric']:.4g}",
                f"{drop:+.3f}" if label != "fp32" and not fidelity else "",
                f"{row['ms_1t']:.3f}", f"{base['ms_1t'] / row['ms_1t']:.2f}",
                f"{row['ms_2t']:.3f}", f"{base['ms_2t'] / row['ms_2t']:.2f}",
                f"{base['ms_b64'] / row['ms_b64']:.2f}" if "ms_b64" in row else "-",
                f"{row['size_bytes'] / 1e6:.2f}", f"{row['wall_s']:.1f}" if label != "fp32" else "",
                f"{row['rss_mib']:.0f}" if row.get("rss_mib") else "", "",
            ])
    return benchlib.markdown_table(headers, rows)


def summary(results: dict[str, Any]) -> list[str]:
    """The issue's targets, checked: validity, accuracy vs ORT, speed vs FP32 and vs ORT static."""
    lines = []
    speedups, vs_ort = [], []
    for model, result in results.items():
        v = result["variants"]
        ours = v.get("onnxq", {})
        if ours.get("error"):
            lines.append(f"- {model}: onnxq INVALID: {ours['error']}")
            continue
        base = v["fp32"]
        speed = f"speed-up vs fp32 {base['ms_1t'] / ours['ms_1t']:.2f}x (1t)" + (
            f", {base['ms_b64'] / ours['ms_b64']:.2f}x at batch 64" if "ms_b64" in ours else "")
        if base["ms_1t"] >= MIN_LATENCY_MS:
            speedups.append(base["ms_1t"] / ours["ms_1t"])
        ort_static = v.get("ort-static-minmax", {})
        if not ort_static.get("error") and "ms_1t" in ort_static:
            vs_ort.append(ours["ms_1t"] / ort_static["ms_1t"])
        if result["metric_name"] == "SQNR dB":
            ort = {k: r["metric"] for k, r in v.items() if k.startswith("ort") and not r.get("error")}
            best = max(ort, key=ort.__getitem__) if ort else None
            lines.append(f"- {model}: SQNR vs FP32 {ours['metric']:.1f} dB; onnxruntime best "
                         + (f"{ort[best]:.1f} dB ({best})" if best else "none valid") + f"; {speed}")
            continue
        drop = base["metric"] - ours["metric"]
        ort_ok = [k for k, r in v.items() if k.startswith("ort") and not r.get("error")
                  and base["metric"] - r["metric"] <= 0.01]
        lines.append(f"- {model}: drop {drop:+.4f} ({'within' if drop <= 0.01 else 'OUTSIDE'}"
                     f" 1 point; ORT variants within: {', '.join(ort_ok) or 'none'}), {speed}")
    if speedups:
        lines.append(f"- geomean speed-up over FP32 (1 thread, models with FP32 >= {MIN_LATENCY_MS} ms): "
                     f"{math.exp(statistics.mean(math.log(s) for s in speedups)):.2f}x over {len(speedups)} models")
    if vs_ort:
        lines.append(f"- median latency ratio onnxq / ORT static minmax (1 thread): {statistics.median(vs_ort):.2f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ort-worker", nargs=4, metavar=("KIND", "MODEL", "CALIB", "OUT"))
    parser.add_argument("--models", nargs="*", help="zoo or third-party model names (default: all)")
    parser.add_argument("--runs", type=int, default=36, help="timed runs per variant and thread count")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="only ort-dynamic, ort-static-minmax and onnxq")
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_quantize.json")
    args = parser.parse_args()
    if args.ort_worker:
        ort_worker(*args.ort_worker)
        return 0
    from models import zoo

    zoo.ensure_built()
    names = args.models or [*sorted(zoo.load_manifest()), *_thirdparty_names()]
    results: dict[str, Any] = {}
    work_root = benchlib.RESULTS / "quantize"
    for name in names:
        print(f"{name}:", file=sys.stderr)
        source = zoo_source(name) if name in zoo.load_manifest() else thirdparty_source(name)
        results[name] = bench_model(name, source, work_root / name, args)
    text = table(results)
    lines = summary(results)
    print(text)
    print()
    print("\n".join(lines))
    if warning := benchlib.busy_warning():
        print(f"\n{warning}")
    benchlib.write_json(args.out, {"environment": benchlib.environment(), "results": results, "summary": lines})
    return 0


def _thirdparty_names() -> list[str]:
    try:
        import thirdparty
    except ImportError:
        return []
    return list(getattr(thirdparty, "MODELS", ()))


if __name__ == "__main__":
    sys.exit(main())
