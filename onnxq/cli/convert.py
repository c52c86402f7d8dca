"""``onnxq convert SRC -o OUT.onnx``: a PyTorch or TensorFlow export to a checked ONNX model.

Thin: parses, calls :func:`onnxq.convert.convert`, saves with
:func:`onnxq.ir.io.save_model`, prints. Converters and frameworks print to stdout
on their own, so stdout is pointed at stderr while they run: with ``--json``,
stdout carries exactly one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxq.cli._common import check_output, console, print_json, stderr
from onnxq.convert import DEFAULT_ATOL, DEFAULT_RTOL, convert, parse_requests
from onnxq.errors import ConversionError, ModelSaveError
from onnxq.ir.io import save_model

_EPILOG = """\
sources:
  model.pt2          torch.export.save(torch.export.export(model, args), "model.pt2")
  saved_model/       a TensorFlow SavedModel folder (e.g. Keras model.export("saved_model"))
  model.keras/.h5    a Keras model file
  model.tflite       a TFLite flatbuffer

dynamic dims (--dynamic, repeatable):
  INPUT=NAME         axis 0 of input INPUT is dynamic and named NAME   (--dynamic x=batch)
  INPUT:AXIS=NAME    axis AXIS of input INPUT                          (--dynamic ids:1=seq)
  For .keras/.h5 the axis becomes dynamic; .pt2, SavedModel and .tflite files fix their
  shapes, so there it names an axis that is already dynamic. Unnamed dynamic axes get
  default names (batch, seq, height, width, ...). One NAME on two axes means the same size.

The result is checked before it is written: onnx checker (full check), shape inference,
and outputs of the source framework vs onnxruntime CPU on the same inputs (example inputs
stored in a .pt2 file, else seeded random inputs) within --rtol/--atol.

examples:
  onnxq convert model.pt2 -o model.onnx --dynamic x=batch
  onnxq convert saved_model/ -o model.onnx --opset 17 --optimize --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert",
        help="convert a PyTorch (.pt2) or TensorFlow (SavedModel, .keras, .h5, .tflite) export to ONNX",
        description="Convert a framework export to a checked ONNX model.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, help="a .pt2 file, a SavedModel folder, or a .keras/.h5/.tflite file")
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output .onnx file (the only file written)"
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 18; PyTorch 18-23, TensorFlow 13-18)")
    p.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="INPUT[:AXIS]=NAME",
        help="make/name a dynamic dim, e.g. x=batch or ids:1=seq (repeatable; see below)",
    )
    level = p.add_mutually_exclusive_group()
    level.add_argument("--optimize", action="store_const", const=True, default=None,
                       help="run the 'cleanup' pipeline on the result")
    level.add_argument("--no-optimize", dest="optimize", action="store_const", const=False,
                       help="PyTorch: export the raw graph (exporter's optimizer off: BatchNorm and decomposed "
                            "ops kept), e.g. to run 'onnxq optimize' on it")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help="relative tolerance of the numeric check")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="absolute tolerance of the numeric check")
    p.add_argument(
        "--external-data",
        choices=("auto", "yes", "no"),
        default="auto",
        help="write weights to <output>.data (auto: only above 2 GB)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source: Path = args.source
    output: Path = args.output
    _refuse_output_over_source(source, output)
    check_output(source, output)
    dynamic: dict[str, str] = {}
    for request in parse_requests(args.dynamic):
        if dynamic.get(request.key, request.name) != request.name:
            raise ConversionError(
                f"--dynamic {request}: '{request.key}' is already named '{dynamic[request.key]}'"
            )
        dynamic[request.key] = request.name
    if not getattr(args, "debug", False):
        _quiet_frameworks()
    with stderr.status(f"converting {source}") as status, _stdout_to_stderr():
        result = convert(
            source,
            opset=args.opset,
            dynamic=dynamic or None,
            optimize=args.optimize,
            rtol=args.rtol,
            atol=args.atol,
        )
        status.update(f"saving {output}")
        external = {"auto": None, "yes": True, "no": False}[args.external_data]
        save_model(result.model, output, external_data=external)
    report: dict[str, Any] = {**result.to_json(), "output": str(output)}
    if args.json:
        print_json(report)
    elif not getattr(args, "quiet", False):
        _print_summary(report, console(False))
    return 0


def _refuse_output_over_source(source: Path, output: Path) -> None:
    """-o must not be the source (also via a link) nor inside a source folder (a SavedModel)."""
    if not source.exists():
        return
    same = output.resolve() == source.resolve()
    if not same and output.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(output, source)
    if same:
        raise ModelSaveError(f"{output}: -o is the source; choose another output file")
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise ModelSaveError(f"{output}: -o lies inside the source folder {source}; write it elsewhere")


def _quiet_frameworks() -> None:
    """Hides framework chatter meant for their developers (shown again with --debug)."""
    # NOTE: must be set before TensorFlow is imported; silences its C++ INFO/WARNING logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # NOTE: "torchvision is not installed. Skipping torchvision::nms" on every export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _print_summary(report: dict[str, Any], out: Any) -> None:
    def values(rows: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{r['name']}[{','.join('?' if d is None else str(d) for d in r['shape'])}] {r['dtype']}"
            for r in rows
        )

    tol = report["tolerance"]
    diffs = ", ".join(f"{k}={v:.3g}" for k, v in report["max_abs_diff"].items())
    lines = [
        f"{report['source']} -> {report['output']} ({report['source_kind']}, opset {report['opset']})",
        f"  inputs:  {values(report['inputs'])}",
        f"  outputs: {values(report['outputs'])}",
        f"  max abs diff vs source: {diffs} (rtol={tol['rtol']:g}, atol={tol['atol']:g})",
    ]
    if report["renamed_dims"]:
        lines.append("  dynamic dims: " + ", ".join(f"{k} -> {v}" for k, v in report["renamed_dims"].items()))
    if report["optimized"]:
        lines.append("  cleaned up with: cleanup")
    lines.extend(f"  note: {note}" for note in report["notes"])
    for line in lines:
        # NOTE: shapes look like rich markup ('x[batch,4]'); print them literally.
        out.print(line, markup=False)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Points stdout at stderr for the duration: Python's ``sys.stdout`` and file descriptor 1."""
    sys.stdout.flush()
    # NOTE: C/C++ code writes to descriptor 1 whatever sys.stdout is (pytest, IDEs replace it).
    saved: int | None = None
    with contextlib.suppress(OSError):
        saved = os.dup(1)
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _flush_c_stdio() -> None:
    # NOTE: C libraries buffer stdout; flush it while fd 1 still points at stderr.
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)
