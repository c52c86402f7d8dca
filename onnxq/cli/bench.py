"""``onnxq bench MODEL [MODEL...]``: latency, throughput, size and peak memory, with an acceptance gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxq.cli._common import console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="latency p50/p90/p99, throughput, size, peak memory; first model is the reference")
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL", help=".onnx files, measured interleaved")
    p.add_argument("--threads", default="1", metavar="N[,N...]", help="intra-op thread counts (default 1)")
    p.add_argument("--batch", metavar="N[,N...]",
                   help="batch sizes: the inputs' first axis is cut or repeated to each (default: as given)")
    p.add_argument("--runs", type=int, metavar="N", help="timed runs per model (default: adaptive, ~3 s)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed runs per model first (default 5)")
    p.add_argument("--inputs", type=Path, metavar="PATH",
                   help=".npz (keys = input names) or folder of <input>.npy; default: generated inputs")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurement (one subprocess per model)")
    p.add_argument("--min-speedup", type=float, metavar="X",
                   help="gate: every candidate's p50 speedup over the first model must be >= X")
    p.add_argument("--max-size", metavar="BYTES|MB", help="gate: every candidate's size on disk must be <= this")
    p.add_argument("--report", type=Path, metavar="FILE.html|FILE.md",
                   help="write an HTML (plots embedded) or Markdown report")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def _ints(flag: str, text: str) -> list[int]:
    from onnxq.errors import OptionError

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise OptionError(f"{flag} {text!r}: expected integers such as 1,2") from None
    if not values or any(v < 1 for v in values):
        raise OptionError(f"{flag} {text!r}: expected positive integers such as 1,2")
    return values


def run(args: argparse.Namespace) -> int:
    from onnxq.errors import OptionError
    from onnxq.validation.bench import bench, gate, parse_size

    max_size = parse_size(args.max_size) if args.max_size is not None else None
    if args.min_speedup is not None and len(args.models) < 2:
        raise OptionError("--min-speedup needs a reference and a candidate: give two models or more")
    if args.inputs is not None and not args.inputs.exists():
        raise OptionError(f"--inputs {args.inputs}: no such file or folder")
    batches = _ints("--batch", args.batch) if args.batch is not None else None
    if getattr(args, "report", None) is not None:
        from onnxq.validation.report import check_report_path

        check_report_path(args.report)
    report = bench(args.models, threads=_ints("--threads", args.threads), runs=args.runs, warmup=args.warmup,
                   inputs=args.inputs, memory=args.memory, batches=batches)
    gated = args.min_speedup is not None or max_size is not None
    verdict = gate(report, min_speedup=args.min_speedup, max_size=max_size) if gated else None
    if getattr(args, "report", None) is not None:
        from onnxq.validation.report import bench_document, write_report

        write_report(bench_document(report, verdict), args.report)
    if args.json:
        doc = report.to_json()
        doc["gate"] = verdict.to_json() if verdict else None
        print_json(doc)
    else:
        out = console(False)
        if not args.quiet:
            for line in report.lines():
                out.print(line, markup=False)
        if verdict is not None:
            out.print(verdict.line, markup=False)
    return 0 if verdict is None or verdict.passed else 1
