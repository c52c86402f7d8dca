"""Benchmark: onnxq's streaming histogram calibration vs onnxruntime.quantization's calibrators.

Same model, same samples (a folder of ``.npz`` files, one feed each, read one at a time by both
tools), each run in its own subprocess; peak RSS is the child's ``ru_maxrss`` (what
``/usr/bin/time -v`` reports) and wall time includes interpreter start and imports. Compared:

* onnxq ``calibrate(model, folder, method=entropy|percentile)`` (histogram observers, 4096 bins);
* onnxruntime ``create_calibrator(..., CalibrationMethod.Entropy|Percentile)`` +
  ``collect_data(reader)`` + ``compute_data()`` with its defaults (Entropy: 128 bins,
  Percentile: 2048 bins, 99.999).

Samples are batches of ``--batch`` images drawn in order (cyclically) from the zoo model's
``<name>.calib.npz``, so activations are large enough for the difference to show. A child whose
RSS passes ``--cap-gib`` stops itself and is reported as over the cap (onnxruntime's histogram
calibrators keep every activation of every sample).

Usage::

    python tools/bench_calibration.py [--model crnn_ocr] [--samples 100 1000] [--batch 16]
                                      [--methods entropy percentile] [--cap-gib 8]
                                      [--out tools/results/bench_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

ROOT = benchlib.TOOLS.parent
OVER_CAP_EXIT = 3


# --- children ------------------------------------------------------------------------------------
def _watch_rss(cap_gib: float) -> None:
    """Stops this process (exit 3) when its RSS passes the cap, so the machine never swaps."""
    page = os.sysconf("SC_PAGE_SIZE")

    def loop() -> None:
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > cap_gib * 1024**3:
                print(json.dumps({"over_cap_gib": cap_gib}), flush=True)
                os._exit(OVER_CAP_EXIT)
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True).start()


def child(tool: str, method: str, model: str, folder: str, cap_gib: float) -> None:
    _watch_rss(cap_gib)
    files = sorted(Path(folder).glob("*.npz"))
    if tool == "onnxq":
        import onnx_ir as ir

        from onnxq.calibration import calibrate

        ranges = calibrate(ir.load(model), folder, method=method)
        print(json.dumps({"tensors": len(ranges), "samples": ranges.samples}))
        return
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class FolderReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = iter(files)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.files, None)
            if path is None:
                return None
            with np.load(path) as data:
                return {k: data[k] for k in data.files}

    kind = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="ort-calib-") as tmp:
        calibrator = create_calibrator(
            model, augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=kind
        )
        calibrator.collect_data(FolderReader())
        ranges = calibrator.compute_data()
    print(json.dumps({"tensors": len(ranges.data), "samples": len(files)}))


# --- parent --------------------------------------------------------------------------------------
def write_samples(calib: dict[str, np.ndarray], folder: Path, count: int, batch: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    total = len(next(iter(calib.values())))
    for i in range(count):
        rows = [(i * batch + j) % total for j in range(batch)]
        np.savez(folder / f"{i:05d}.npz", **{k: v[rows] for k, v in calib.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="crnn_ocr")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--methods", nargs="+", default=["entropy", "percentile"], choices=["entropy", "percentile"]
    )
    parser.add_argument("--tools", nargs="+", default=["onnxq", "ort"], choices=["onnxq", "ort"])
    parser.add_argument("--cap-gib", type=float, default=8.0)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_calibration.json")
    parser.add_argument(
        "--child", nargs=4, metavar=("TOOL", "METHOD", "MODEL", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, cap_gib=args.cap_gib)
        return 0

    sys.path.insert(0, str(ROOT))
    from models import zoo

    zoo.ensure_built([args.model])
    model = zoo.model_path(args.model)
    calib = zoo.load_calib(args.model)
    if warning := benchlib.busy_warning():
        print(warning)
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-calib-", dir=args.workdir) as tmp:
        for count in args.samples:
            folder = Path(tmp) / f"s{count}"
            write_samples(calib, folder, count, args.batch)
            for method in args.methods:
                by_tool: dict[str, benchlib.Measurement] = {}
                for tool in args.tools:
                    command = [
                        sys.executable, __file__, "--cap-gib", str(args.cap_gib),
                        "--child", tool, method, str(model), str(folder),
                    ]  # fmt: skip
                    m = benchlib.measure(f"{tool} {method} {count}", command, cwd=ROOT)
                    by_tool[tool] = m
                    over = m.returncode == OVER_CAP_EXIT
                    if m.returncode not in (0, OVER_CAP_EXIT):
                        print(f"{m.label} failed ({m.returncode}):\n{m.stderr[-2000:]}", file=sys.stderr)
                    results.append(
                        {**m.as_dict(), "tool": tool, "method": method, "samples": count, "over_cap": over}
                    )
                    print(
                        f"{m.label}: {m.wall_s:.1f} s, {m.max_rss_mib:.0f} MiB{' (over the cap)' if over else ''}"
                    )
                ours, theirs = by_tool.get("onnxq"), by_tool.get("ort")
                ratio_rss = ratio_wall = None
                if ours and theirs and theirs.returncode == 0:
                    ratio_rss = round(ours.max_rss_mib / theirs.max_rss_mib, 3)
                    ratio_wall = round(ours.wall_s / theirs.wall_s, 3)
                elif ours and theirs and theirs.returncode == OVER_CAP_EXIT:
                    ratio_rss = (
                        f"< {ours.max_rss_mib / theirs.max_rss_mib:.3f} (ORT over {args.cap_gib} GiB cap)"
                    )
                rows.append(
                    [
                        args.model,
                        count,
                        method,
                        ours.wall_s if ours else "",
                        ours.max_rss_mib if ours else "",
                        theirs.wall_s if theirs else "",
                        (
                            f"> {theirs.max_rss_mib}"
                            if theirs.returncode == OVER_CAP_EXIT
                            else theirs.max_rss_mib
                        )
                        if theirs
                        else "",
                        ratio_rss if ratio_rss is not None else "",
                        ratio_wall if ratio_wall is not None else "",
                    ]
                )
    headers = [
        "model", "samples", "method", "onnxq s", "onnxq MiB", "ORT s", "ORT MiB", "RSS onnxq/ORT", "wall onnxq/ORT",
    ]  # fmt: skip
    print(f"\n{args.model}: samples are batches of {args.batch}; peak RSS = ru_maxrss of each child\n")
    print(benchlib.markdown_table(headers, rows))
    growth = {}
    for method in args.methods:
        peaks = {
            r["samples"]: r["max_rss_mib"] for r in results if r["tool"] == "onnxq" and r["method"] == method
        }
        if len(peaks) >= 2:
            lo, hi = min(peaks), max(peaks)
            growth[method] = round(peaks[hi] / peaks[lo], 3)
            print(f"onnxq {method}: peak RSS at {hi} samples / at {lo} = {growth[method]}")
    benchlib.write_json(
        args.out,
        {
            "environment": benchlib.environment(),
            "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
            "results": results,
            "onnxq_rss_growth": growth,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
