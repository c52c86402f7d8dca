"""``onnxq run MODEL -p PIPELINE -o OUT``: apply a pipeline (text or .toml) to a model."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir
from rich.status import Status

from onnxq.cli._common import check_output, console, print_json, stderr
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import (
    CrashReproducer,
    DumpAfterChange,
    Instrumentation,
    NumericCheckEach,
    Timing,
    VerifyEach,
)
from onnxq.framework.pipeline import apply
from onnxq.framework.registry import PassRegistry
from onnxq.ir.io import load_model, save_model
from onnxq.runtime import load_inputs


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="apply a pipeline of passes to a model")
    p.add_argument("model", type=Path, help="input .onnx file (never modified)")
    p.add_argument("-p", "--pipeline", required=True, help="pipeline text ('a,b{x=1}') or a .toml file")
    add_run_options(p)
    p.set_defaults(func=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``onnxq run`` besides MODEL and -p; presets of run (``onnxq optimize``) share them."""
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    p.add_argument("--in-place", action="store_true", help="allow -o to be the input file")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to <output>.data (auto: only above 2 GB)")
    p.add_argument("--verify-each", action="store_true", help="onnx checker + shape inference after each pass")
    p.add_argument("--numeric-check-each", action="store_true",
                   help="run onnxruntime after each changing pass; stop at the first that changes outputs")
    p.add_argument("--inputs", type=Path, help=".npz (or folder of .npy) sample inputs for numeric checks")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of numeric checks")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of numeric checks")
    p.add_argument("--timing", action="store_true", help="report wall time per pass")
    p.add_argument("--dump-after-change", type=Path, metavar="DIR",
                   help="write the model to DIR after every pass that changed it")
    p.add_argument("--reproducer", type=Path, metavar="DIR",
                   help="on a pass failure, write the input model and pipeline text to DIR")
    p.add_argument("--json", action="store_true", help="print one JSON document")


class _Progress(Instrumentation):
    """Shows the running pass on stderr (only on a terminal)."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def before_pass(self, pass_: Pass, model: ir.Model, ctx: PassContext) -> None:
        self.status.update(f"running {pass_}")


def run(args: argparse.Namespace) -> int:
    return run_pipeline(args, PassRegistry.default().load(args.pipeline))


#: Called with the transformed model before it is saved; returns extra report entries and text lines.
AfterRun = Callable[[ir.Model], tuple[dict[str, Any], list[str]]]


def run_pipeline(args: argparse.Namespace, pipeline: Pass, *, after: AfterRun | None = None) -> int:
    """Loads ``args.model``, applies ``pipeline`` with the instrumentation the flags ask for, saves, reports.

    Shared by ``onnxq run`` and its presets (``onnxq optimize``); ``args`` carries the flags of
    :func:`add_run_options`. ``after`` adds entries to the report (e.g. ``--explain``).
    """
    check_output(args.model, args.output, in_place=args.in_place)
    timing = Timing()
    hooks: list[Instrumentation] = [timing]
    if args.verify_each:
        hooks.append(VerifyEach())
    numeric = None
    if args.numeric_check_each:
        numeric = NumericCheckEach(load_inputs(args.inputs) if args.inputs else None, rtol=args.rtol, atol=args.atol)
        hooks.append(numeric)
    if args.dump_after_change:
        hooks.append(DumpAfterChange(args.dump_after_change))
    if args.reproducer:
        hooks.append(CrashReproducer(args.reproducer))
    out = console(args.json)
    extra: dict[str, Any] = {}
    lines: list[str] = []
    with stderr.status(f"loading {args.model}") as status:
        model = load_model(args.model)
        hooks.append(_Progress(status))
        result = apply(model, pipeline, PassContext(instrumentations=hooks))
        if after is not None:
            status.update("explaining")
            extra, lines = after(model)
        status.update(f"saving {args.output}")
        external = {"auto": None, "yes": True, "no": False}[args.external_data]
        save_model(model, args.output, external_data=external, in_place=args.in_place)
    report = {**_report(args, pipeline, result, timing, numeric), **extra}
    if args.json:
        print_json(report)
    elif not args.quiet:
        out.print(f"{args.model} -> {args.output}: {'changed' if result.modified else 'unchanged'} by {pipeline}",
                  markup=False)
        for key, value in result.stats.items():
            out.print(f"  {key}: {value}")
        for diagnostic in result.diagnostics:
            out.print(f"  {diagnostic}", markup=False)
        if numeric is not None:
            out.print(f"  numeric check: outputs unchanged after {len(numeric.checked)} changing passes")
        if args.timing:
            for name, row in timing.summary().items():
                out.print(f"  {name:36s} {row['seconds'] * 1000:9.1f} ms  runs={row['runs']} changed={row['changed']}")
        for line in lines:
            out.print(line, markup=False)
    return 0


def _report(
    args: argparse.Namespace, pipeline: Pass, result: PassResult, timing: Timing, numeric: NumericCheckEach | None
) -> dict[str, Any]:
    return {
        "input": str(args.model),
        "output": str(args.output),
        "pipeline": str(pipeline),
        "modified": result.modified,
        "stats": dict(result.stats),
        "diagnostics": [str(d) for d in result.diagnostics],
        "timing": timing.summary(),
        "numeric_check": None if numeric is None else {"passes_checked": numeric.checked, "ok": True},
    }
