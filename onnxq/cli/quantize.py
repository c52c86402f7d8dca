"""``onnxq quantize MODEL -o OUT --calib PATH``: INT8 for ONNX Runtime CPU or TensorRT."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxq.cli._common import check_output, console, print_json, stderr
from onnxq.ir.io import load_model, save_model


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from onnxq.quantization.quantize import METHODS, MODES
    from onnxq.targets import TARGETS

    p = sub.add_parser("quantize", help="quantize a model to INT8 (static QDQ or dynamic)")
    p.add_argument("model", type=Path, help="input float .onnx file (never modified)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    p.add_argument("--target", default="ort-cpu", choices=TARGETS, help="execution provider profile")
    p.add_argument("--mode", default="static", choices=MODES,
                   help="static: calibrated QDQ activations (default); dynamic: weights only, "
                        "activations quantized at run time")
    p.add_argument("--calib", type=Path, metavar="PATH",
                   help="calibration samples: a folder of .npz (one feed each) or one .npz with a "
                        "leading sample axis")
    p.add_argument("--method", default="minmax", choices=METHODS, help="calibration method")
    p.add_argument("--percentile", type=float, help="percentile of the 'percentile' method (default 99.999)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                       help="per-channel weights (default)")
    group.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weights")
    p.add_argument("--cpu", choices=("avx2", "vnni", "arm64"),
                   help="the CPU the model will run on (default: this machine's)")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME|OP|REGEX",
                   help="leave matching nodes in float (repeatable)")
    p.add_argument("--include", action="append", default=[], metavar="NAME|OP|REGEX",
                   help="quantize only matching nodes (repeatable)")
    p.add_argument("--ranges", type=Path, metavar="FILE", help="reuse calibrated ranges; skip calibration")
    p.add_argument("--save-ranges", type=Path, metavar="FILE", help="write the calibrated ranges as JSON")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="skip the optimize preset (cleanup + fusions) before quantizing")
    p.add_argument("--no-self-check", dest="self_check", action="store_false",
                   help="skip loading the result in onnxruntime to check fusion, speed and fidelity")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to <output>.data (auto: only above 2 GB)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.errors import OptionError
    from onnxq.quantization.quantize import quantize

    check_output(args.model, args.output)
    if args.mode == "static" and args.calib is None and args.ranges is None:
        raise OptionError("static quantization needs --calib PATH (or --ranges FILE); or use --mode dynamic")
    if args.calib is not None and not args.calib.exists():
        raise OptionError(f"--calib {args.calib}: no such file or folder")
    options: dict[str, Any] = {}
    if args.percentile is not None:
        options["percentile"] = args.percentile
    out = console(args.json)
    with stderr.status(f"loading {args.model}"):
        model = load_model(args.model)
    model, report = quantize(
        model,
        args.calib,
        target=args.target,
        mode=args.mode,
        method=args.method,
        per_channel=args.per_channel,
        cpu=args.cpu,
        exclude=args.exclude,
        include=args.include,
        ranges=str(args.ranges) if args.ranges else None,
        save_ranges=str(args.save_ranges) if args.save_ranges else None,
        optimize=args.optimize,
        self_check=args.self_check,
        method_options=options,
        progress=not (args.json or args.quiet),
    )
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    with stderr.status(f"saving {args.output}"):
        save_model(model, args.output, external_data=external)
    doc = report.to_json()
    doc.update(input=str(args.model), output=str(args.output),
               size_bytes={"input": _size(args.model), "output": _size(args.output)})
    if args.json:
        print_json(doc)
    elif not args.quiet:
        for line in summary_lines(doc):
            out.print(line, markup=False)
    return 0


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The human summary of a quantize report (JSON form)."""
    sizes = doc["size_bytes"]
    lines = [
        f"{doc['input']} -> {doc['output']}: {doc['mode']} int8 for {doc['target']}"
        + (f", {doc['method']} ranges" if doc["method"] else "")
        + (", per-channel" if doc["per_channel"] else ", per-tensor") + " weights",
    ]
    if doc.get("cpu"):
        lines.append(f"  cpu: {doc['cpu']}" + (f" ({doc['cpu_note']})" if doc.get("cpu_note") else ""))
    if doc.get("opset"):
        lines.append(f"  opset: {doc['opset'][0]}" + (
            f" -> {doc['opset'][1]}" if doc["opset"][1] != doc["opset"][0] else ""))
    if doc.get("calibration_samples"):
        lines.append(f"  calibration: {doc['calibration_samples']} samples"
                     + (f", {doc['holdout_samples']} held back for the self-check" if doc["holdout_samples"] else ""))
    if doc.get("ranges_from"):
        lines.append(f"  ranges: from {doc['ranges_from']}")
    lines.append(f"  size: {sizes['input'] / 1e6:.2f} MB -> {sizes['output'] / 1e6:.2f} MB "
                 f"({sizes['output'] / max(sizes['input'], 1):.2f}x)")
    for key, value in doc["stats"].items():
        lines.append(f"  {key}: {value}")
    check = doc.get("self_check")
    if check:
        lines.extend(f"  {line}" for line in check.get("lines", []))
    for diagnostic in doc["diagnostics"]:
        lines.append(f"  {diagnostic}")
    return lines
