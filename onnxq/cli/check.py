"""``onnxq check MODEL [--target ort-cpu|tensorrt]``: validate a graph before shipping it."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxq.cli._common import console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from onnxq.validation.check import TARGETS

    p = sub.add_parser("check", help="checker, shapes, initializers, QDQ sanity and target rules; exit 1 on violations")
    p.add_argument("model", type=Path, help=".onnx file")
    p.add_argument("--target", default="ort-cpu", choices=TARGETS,
                   help="execution provider whose rules apply (ort-cpu runs onnxruntime's optimizer)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.validation.check import check

    report = check(args.model, target=args.target)
    if args.json:
        print_json(report.to_json())
    elif not args.quiet or not report.ok:
        out = console(False)
        for line in report.lines():
            out.print(line, markup=False)
        if report.fusion is not None:
            for line in report.fusion.lines()[:1]:
                out.print(f"  {line}", markup=False)
    return 0 if report.ok else 1
