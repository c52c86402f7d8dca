"""``onnxq compare REF CANDIDATE --data PATH``: output metrics, per-layer SQNR, accuracy and its gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxq.cli._common import add_executor_arguments, console, executor_from_args, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("compare", help="reference vs candidate: output metrics, per-layer SQNR worst first, accuracy")
    p.add_argument("reference", type=Path, metavar="REF", help="reference (float) .onnx file")
    p.add_argument("candidate", type=Path, metavar="CANDIDATE", help="candidate (e.g. quantized) .onnx file")
    p.add_argument("--data", type=Path, required=True, metavar="PATH",
                   help="samples: a folder of .npz (one feed each) or one .npz with a leading sample axis")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help=".npy/.npz labels, one per row (default: a 'labels' array in the data, if any)")
    p.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="accuracy = function(outputs: list[np.ndarray], labels or None) -> float, higher is better")
    p.add_argument("--max-samples", type=int, metavar="N", help="use only the first N samples")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="run the samples in N parallel shards")
    add_executor_arguments(p)
    p.add_argument("--max-accuracy-drop", type=float, metavar="X",
                   help="gate: reference accuracy minus candidate accuracy must be <= X (0.01 = one point)")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="gate: mean output SQNR must be >= DB (when accuracy is SQNR: no labels, no class scores)")
    p.add_argument("--max-size", metavar="BYTES|MB", help="gate: the candidate's size on disk must be <= this")
    p.add_argument("--report", type=Path, metavar="FILE.html|FILE.md", help="write an HTML or Markdown report")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.errors import OptionError
    from onnxq.validation.bench import model_size, parse_size
    from onnxq.validation.compare import accuracy_gate, compare
    from onnxq.validation.report import check_report_path, compare_document, write_report

    for flag, path in (("REF", args.reference), ("CANDIDATE", args.candidate)):
        if not path.is_file():
            raise OptionError(f"{flag} {path}: no such file")
    if not args.data.exists():
        raise OptionError(f"--data {args.data}: no such file or folder")
    if args.labels is not None and not args.labels.is_file():
        raise OptionError(f"--labels {args.labels}: no such file")
    if args.report is not None:
        check_report_path(args.report)
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    with executor_from_args(args) as executor:
        report = compare(args.reference, args.candidate, args.data, labels=args.labels, metric=args.metric,
                         max_samples=args.max_samples, executor=executor)
    gated = args.max_accuracy_drop is not None or args.min_sqnr is not None or max_size is not None
    verdict = accuracy_gate(report.accuracy, max_accuracy_drop=args.max_accuracy_drop, min_sqnr_db=args.min_sqnr,
                            size_bytes=model_size(args.candidate), max_size=max_size) if gated else None
    if args.report is not None:
        write_report(compare_document(report, verdict), args.report)
    if args.json:
        doc = report.to_json()
        doc["gate"] = verdict.to_json() if verdict else None
        doc["report"] = str(args.report) if args.report else None
        print_json(doc)
    else:
        out = console(False)
        if not args.quiet:
            for line in report.lines():
                out.print(line, markup=False)
            if args.report is not None:
                out.print(f"report: {args.report}", markup=False)
        if verdict is not None:
            out.print(verdict.line, markup=False)
    return 0 if verdict is None or verdict.passed else 1
