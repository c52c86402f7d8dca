"""``onnxq sweep MODEL --calib PATH --data PATH``: several quantization strategies, measured, one recommended."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnxq.cli._common import add_executor_arguments, console, executor_from_args, print_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sweep", help="quantize with several strategies, plot accuracy vs speedup, recommend one")
    p.add_argument("model", type=Path, nargs="*",
                   help="float .onnx file(s) (never modified); with several, '{stem}' in --calib, --data, --labels, "
                        "--out-dir and --report stands for each model's file stem; not needed with --list")
    p.add_argument("--calib", type=Path, metavar="PATH",
                   help="calibration samples (required): a folder of .npz or one .npz with a leading sample axis")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="evaluation samples (required), same formats (a 'labels' array in it serves as labels)")
    p.add_argument("--labels", type=Path, metavar="FILE", help=".npy/.npz labels, one per row of the data")
    p.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="accuracy = function(outputs: list[np.ndarray], labels or None) -> float, higher is better")
    p.add_argument("--strategies", metavar="NAME[,NAME...]", help="strategies to run (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the strategies and exit")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="quantized models and cached results (default: <model stem>-sweep beside the model; "
                        "with several models, one folder per model under DIR unless it holds '{stem}')")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="strategies quantized in parallel processes")
    add_executor_arguments(p)
    p.add_argument("--max-accuracy-drop", type=float, metavar="X",
                   help="gate: accuracy drop against FP32 must be <= X (default 0.01 for the recommendation)")
    p.add_argument("--min-speedup", type=float, metavar="S", help="gate: p50 speedup over FP32 must be >= S")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="gate when accuracy is the output SQNR (default 20 dB for the recommendation)")
    p.add_argument("--latency-budget", type=float, default=2.0, metavar="S",
                   help="timed seconds per strategy, interleaved with FP32 (default 2)")
    p.add_argument("--report", type=Path, metavar="FILE.html|FILE.md", help="write an HTML or Markdown report")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxq.errors import OptionError
    from onnxq.validation.report import sweep_document, write_report
    from onnxq.validation.sweep import StrategyRegistry, sweep

    registry = StrategyRegistry.default()
    if args.list:
        out = console(args.json)
        if args.json:
            print_json([{"name": n, "summary": registry.get(n).summary} for n in registry.names()])
        else:
            for name in registry.names():
                out.print(f"{name}: {registry.get(name).summary}", markup=False)
        return 0
    if not args.model:
        raise OptionError("sweep needs MODEL (or --list)")
    for flag, value in (("--calib", args.calib), ("--data", args.data)):
        if value is None:
            raise OptionError(f"sweep needs {flag} PATH")
    if args.latency_budget <= 0:
        raise OptionError(f"--latency-budget must be positive, got {args.latency_budget}")
    names = [n.strip() for n in args.strategies.split(",") if n.strip()] if args.strategies else None
    several = len(args.model) > 1
    if len({m.stem for m in args.model}) != len(args.model):
        raise OptionError("sweep: two MODELs share a file stem; their outputs would collide")
    plans = [_plan(args, model, several) for model in args.model]
    docs = []
    passed = True
    # NOTE: one model after the other, each one's strategies in parallel on the executor: latency is
    # measured in this process between them, one model at a time
    with executor_from_args(args) as executor:
        for model, plan in zip(args.model, plans, strict=True):
            report = sweep(model, plan["calib"], plan["data"], out_dir=plan["out_dir"], strategies=names,
                           labels=plan["labels"], metric=args.metric, jobs=args.jobs,
                           max_accuracy_drop=args.max_accuracy_drop, min_speedup=args.min_speedup,
                           min_sqnr_db=args.min_sqnr, latency_budget_s=args.latency_budget, registry=registry,
                           progress=not (args.json or args.quiet), executor=executor)
            doc = report.to_json()
            if plan["report"] is not None:
                write_report(sweep_document(doc), plan["report"])
            doc["report"] = str(plan["report"]) if plan["report"] else None
            docs.append(doc)
            passed = passed and (not report.gated or report.passed)
            if not args.json:
                out = console(False)
                if not args.quiet:
                    if several:
                        out.print(f"== {model}", markup=False)
                    for line in report.lines():
                        out.print(line, markup=False)
                    if plan["report"] is not None:
                        out.print(f"report: {plan['report']}", markup=False)
                if report.gated:
                    out.print(report.gate_line(), markup=False)
    if args.json:
        print_json(docs if several else docs[0])
    return 0 if passed else 1


def _plan(args: argparse.Namespace, model: Path, several: bool) -> dict[str, Any]:
    """One model's paths, with '{stem}' replaced; checked before anything runs."""
    from onnxq.errors import OptionError
    from onnxq.validation.report import check_report_path

    def path(value: Path | None) -> Path | None:
        return None if value is None else Path(str(value).replace("{stem}", model.stem))

    if not model.is_file():
        raise OptionError(f"MODEL {model}: no such file")
    plan: dict[str, Any] = {"calib": path(args.calib), "data": path(args.data), "labels": path(args.labels),
                            "report": path(args.report)}
    for flag, key in (("--calib", "calib"), ("--data", "data"), ("--labels", "labels")):
        if plan[key] is not None and not plan[key].exists():
            raise OptionError(f"{flag} {plan[key]}: no such file or folder")
    if several and args.report is not None and "{stem}" not in str(args.report):
        raise OptionError("--report with several MODELs needs '{stem}' in its path (one report per model)")
    if plan["report"] is not None:
        check_report_path(plan["report"])
    if args.out_dir is None:
        plan["out_dir"] = model.with_name(f"{model.stem}-sweep")
    elif several and "{stem}" not in str(args.out_dir):
        plan["out_dir"] = args.out_dir / model.stem
    else:
        plan["out_dir"] = path(args.out_dir)
    return plan
