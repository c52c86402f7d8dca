"""The mixed-precision sensitivity analysis on each executor, one run on this machine.

``onnxq quantize MODEL --max-accuracy-drop 0 --no-self-check`` (every candidate node measured: N+1
evaluations) with ``--executor local --jobs 1``, ``--executor local --jobs 2`` and ``--executor ray
--jobs 2`` (a local Ray cluster of 2 CPUs started by the command), each in its own subprocess
under ``/usr/bin/time -v`` with a fresh sensitivity cache: wall time, the analysis's own seconds,
and the driver's peak RSS (ru_maxrss: the command and the local pool's workers it waited for;
Ray's daemons and workers are separate processes, not counted). The float sets must agree.

Usage::

    python tools/bench_ray.py [--model PATH --calib PATH]   # default: PP-OCR's direction classifier
                                                             # of the dev set, else the zoo's crnn_ocr
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import benchlib  # noqa: E402

RUNS = (("local, --jobs 1", ["--executor", "local", "--jobs", "1"]),
        ("local, --jobs 2", ["--executor", "local", "--jobs", "2"]),
        ("ray, 2 CPUs", ["--executor", "ray", "--jobs", "2"]))


def default_model() -> tuple[Path, Path]:
    third = REPO / "models" / ".cache" / "thirdparty"
    if (third / "ppocr_cls.onnx").exists():
        return third / "ppocr_cls.onnx", third / "ppocr_cls.calib.npz"
    from models import zoo

    zoo.ensure_built(["crnn_ocr"])
    return zoo.model_path("crnn_ocr"), zoo.zoo_dir() / "crnn_ocr.calib.npz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path)
    p.add_argument("--calib", type=Path)
    args = p.parse_args(argv)
    model, calib = (args.model, args.calib) if args.model else default_model()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-ray-") as tmp:
        for label, extra in RUNS:
            out = Path(tmp) / "out.onnx"
            m = benchlib.measure(label, benchlib.onnxq_command(
                "quantize", str(model), "-o", str(out), "--calib", str(calib), "--max-accuracy-drop", "0",
                "--no-self-check", "--json", "--cache-dir", str(Path(tmp) / f"cache-{len(rows)}"), *extra))
            row: dict[str, Any] = {"executor": label, "rc": m.returncode, "wall_s": m.wall_s,
                                   "driver_rss_mib": m.max_rss_mib}
            if m.returncode in (0, 1):
                doc = json.loads(m.stdout)["mixed"]
                row.update(sensitivity_s=doc["seconds"]["sensitivity"], candidates=doc["candidates"],
                           float_nodes=sorted(n["node"] for n in doc["float_nodes"]))
            else:
                row["error"] = (m.stderr.strip().splitlines() or ["?"])[-1][:300]
            rows.append(row)
            print(row, flush=True)
    same = len({json.dumps(r.get("float_nodes")) for r in rows}) == 1
    print(f"\n### sensitivity analysis of {model.name} ({rows[0].get('candidates')} candidates), one run\n")
    print(benchlib.markdown_table(
        ["executor", "wall s", "analysis s", "driver peak RSS MiB", "float nodes"],
        [[r["executor"], r["wall_s"], round(r.get("sensitivity_s", 0), 1), r["driver_rss_mib"],
          len(r.get("float_nodes", [])) if "error" not in r else r["error"]] for r in rows]))
    print(f"\nsame float set under every executor: {same}")
    benchlib.write_json(benchlib.RESULTS / "bench_ray.json",
                        {"environment": benchlib.environment(), "model": str(model), "rows": rows, "same": same})
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
