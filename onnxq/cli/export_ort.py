"""``onnxq export-ort MODEL -o OUT.ort``: the ORT format mobile packages load, checked by loading it back."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxq.cli._common import console, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from onnxq.convert.ort_format import PLATFORMS, STYLES

    p = sub.add_parser("export-ort", help="write the ORT format (.ort) of a model, checked against the ONNX model")
    p.add_argument("model", type=Path, help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .ort file")
    p.add_argument("--platform", choices=PLATFORMS, default="arm",
                   help="device the file is for: arm (phones; default) or amd64")
    p.add_argument("--style", choices=STYLES, default="fixed",
                   help="fixed: every CPU optimization baked in (default); runtime: for NNAPI / CoreML, "
                        "optimizations replayed on the nodes they do not take")
    p.add_argument("--reduced-ops-config", type=Path, metavar="FILE",
                   help="also write the operator config of a reduced onnxruntime build (--include_ops_by_config)")
    p.add_argument("--inputs", type=Path, metavar="PATH",
                   help=".npz or folder of <input>.npy for the load-back check (default: generated inputs)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq import runtime
    from onnxq.convert.ort_format import export_ort

    inputs = runtime.load_inputs(args.inputs) if args.inputs is not None else None
    result = export_ort(args.model, args.output, platform=args.platform, style=args.style,
                        reduced_ops_config=args.reduced_ops_config, inputs=inputs)
    if args.json:
        print_json(result.to_json())
    elif not args.quiet:
        out = console(False)
        for line in result.lines():
            out.print(line)
    return 0
