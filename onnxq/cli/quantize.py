"""``onnxq quantize MODEL -o OUT --calib PATH``: INT8 for ONNX Runtime CPU or TensorRT."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from onnxq.cli._common import (
    add_executor_arguments,
    check_output,
    console,
    executor_from_args,
    print_json,
    stderr,
)
from onnxq.ir.io import load_model, save_model


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from onnxq.passes.recovery import PASSES
    from onnxq.quantization.quantize import METHODS, MODES
    from onnxq.targets import TARGETS

    RECOVERY = tuple(cls.name for cls in PASSES)  # noqa: N806

    p = sub.add_parser("quantize", help="quantize a model to INT8 (static QDQ or dynamic)")
    p.add_argument("model", type=Path, help="input float .onnx file (never modified)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    p.add_argument("--target", default="ort-cpu", choices=TARGETS, help="execution provider profile")
    p.add_argument("--mode", default="static", choices=MODES,
                   help="static: calibrated QDQ activations (default); dynamic: INT8 weights, "
                        "activations quantized at run time; weight-only: 4-bit MatMul weights in blocks "
                        "(MatMulNBits), activations float")
    p.add_argument("--bits", type=int, choices=(4,), default=4,
                   help="--mode weight-only: bits per weight (4)")
    p.add_argument("--algo", choices=("rtn", "hqq", "gptq", "awq"), default="rtn",
                   help="--mode weight-only: rtn (round to nearest), hqq (half-quadratic, float zero points: a slower kernel), "
                        "gptq or awq (both calibrated: need --calib)")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=32,
                   help="--mode weight-only: weights per block along K (default 32)")
    p.add_argument("--bits8", action="append", default=[], metavar="NAME|OP|REGEX|ends|auto[:SHARE]",
                   help="--mode weight-only: matching MatMuls get 8-bit blocks instead of 4 ('ends': the first "
                        "and the last, e.g. an LM head; 'auto': the most sensitive on the --calib samples, up to "
                        "SHARE of the weights, default 0.1; repeatable)")
    p.add_argument("--int4-embeddings", action="store_true",
                   help="--mode weight-only: Gather tables (embeddings) to 4-bit blocks along the hidden axis too "
                        "(GatherBlockQuantized; a table the LM head shares stays)")
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
    p.add_argument("--a16", action="append", default=[], metavar="NAME|OP|REGEX",
                   help="--target qnn: 16-bit activations (A16W8) for matching node units only, the rest A8W8, "
                        "with converts at the borders (repeatable)")
    p.add_argument("--recovery", action="append", default=[], choices=RECOVERY, metavar="PASS",
                   help="accuracy-recovery pass run before calibration (repeatable; in order): "
                        f"{', '.join(RECOVERY)}; the guard's calibrated rungs keep it")
    p.add_argument("--ranges", type=Path, metavar="FILE", help="reuse calibrated ranges; skip calibration")
    p.add_argument("--save-ranges", type=Path, metavar="FILE", help="write the calibrated ranges as JSON")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="skip the optimize preset (cleanup + fusions) before quantizing")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="keep the plain result even when it is below the fidelity floor (no recovery ladder)")
    p.add_argument("--time-limit", type=float, default=300.0, metavar="SECONDS",
                   help="time for the accuracy guard's recovery ladder (default 300)")
    p.add_argument("--verbose", action="store_true",
                   help="list every QDQ group that stayed float (default: grouped by op type)")
    p.add_argument("--no-self-check", dest="self_check", action="store_false",
                   help="skip loading the result in onnxruntime to check fusion, speed and fidelity")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to <output>.data (auto: only above 2 GB)")
    p.add_argument("--qnn-context", action="store_true",
                   help="--target qnn*: also write OUT_ctx.onnx, the model compiled for the HTP as an EP-context "
                        "model (devices load it without compiling again; needs onnxq[qnn])")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    # Mixed precision (onnxq.quantization.mixed_precision): with --calib, the budget is what the search meets.
    p.add_argument("--max-accuracy-drop", type=float, metavar="X",
                   help="mixed precision: leave the fewest nodes in float so the metric drops at most X "
                        "(metric units, e.g. 0.01 = 1 point) against FP32")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="held set the budget is measured on (.npz with a sample axis, may hold 'labels'; or a "
                        "folder); default: calibration samples held back")
    p.add_argument("--labels", type=Path, metavar="FILE", help="labels of --data (.npy, .npz or text)")
    p.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="fn(outputs, labels) -> float, higher is better (default: top-1 agreement with FP32)")
    p.add_argument("--overrides", type=Path, metavar="FILE",
                   help="JSON node -> int8|float pins (as written by --save-overrides)")
    p.add_argument("--save-overrides", type=Path, metavar="FILE",
                   help="mixed precision: write the chosen assignment with its sensitivities")
    p.add_argument("--curve", type=Path, metavar="FILE.png",
                   help="mixed precision: plot accuracy drop against speedup, the chosen point marked")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="--max-accuracy-drop: sensitivity evaluations in N parallel processes")
    add_executor_arguments(p)
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="mixed precision: sensitivity cache (default: beside --ranges/--save-ranges, "
                        "else $ONNXQ_CACHE_DIR or ~/.cache/onnxq)")
    # Acceptance gate on the written model (onnxq.validation.compare.gate_files); exit 1 on failure.
    p.add_argument("--min-speedup", type=float, metavar="S",
                   help="gate: p50 speedup of the output over the input must be >= S (on the first --data sample)")
    p.add_argument("--max-size", metavar="BYTES|MB", help="gate: the output's size on disk must be <= this")
    p.set_defaults(func=run)


def _qnn_context(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Writes OUT_ctx.onnx beside the output and checks it on the HTP simulator."""
    from onnxq.calibration import CalibrationData
    from onnxq.errors import OptionError
    from onnxq.targets import qnn_htp

    if not qnn_htp.available():
        raise OptionError(f"--qnn-context needs the QNN execution provider: {qnn_htp.INSTALL_HINT}")
    feeds = [f for _, f in itertools.islice(CalibrationData.from_source(args.calib).feeds(model), 2)] \
        if args.calib is not None else []
    path = args.output.with_name(args.output.stem + "_ctx.onnx")
    with stderr.status(f"compiling for the HTP into {path}"):
        written = qnn_htp.write_context(model, path, feeds)
    if not args.json:
        stderr.print(written.summary())
    return {"path": written.path, "size_bytes": written.size, "max_abs_diff": written.max_abs_diff}


def run(args: argparse.Namespace) -> int:
    from onnxq.errors import OptionError
    from onnxq.quantization.guard import guard_applies, quantize_guarded
    from onnxq.quantization.quantize import quantize

    check_output(args.model, args.output)
    if getattr(args, "qnn_context", False) and not args.target.startswith("qnn"):
        raise OptionError(f"--qnn-context needs --target qnn or qnn-a16, not {args.target}")
    if args.mode == "static" and args.calib is None and args.ranges is None:
        raise OptionError("static quantization needs --calib PATH (or --ranges FILE); or use --mode dynamic")
    if args.calib is not None and not args.calib.exists():
        raise OptionError(f"--calib {args.calib}: no such file or folder")
    options: dict[str, Any] = {}
    if args.percentile is not None:
        options["percentile"] = args.percentile
    out = console(args.json)
    if getattr(args, "overrides", None) is not None and not args.overrides.is_file():
        raise OptionError(f"--overrides {args.overrides}: no such file")
    _check_gate(args)
    if getattr(args, "max_accuracy_drop", None) is not None and args.mode == "static":
        if getattr(args, "recovery", None):
            raise OptionError("--recovery does not combine with --max-accuracy-drop (mixed precision measures "
                              "each node without recovery passes); drop one of them")
        return _run_mixed(args, out)
    with stderr.status(f"loading {args.model}"):
        model = load_model(args.model)
    from onnxq.quantization.quantize import AlreadyQuantizedError, refuse_integer_model

    try:
        refuse_integer_model(model)
    except AlreadyQuantizedError as e:
        raise AlreadyQuantizedError(f"{args.model}: {e}") from None
    kwargs: dict[str, Any] = dict(
        target=args.target,
        mode=args.mode,
        per_channel=args.per_channel,
        cpu=args.cpu,
        exclude=args.exclude,
        include=args.include,
        ranges=str(args.ranges) if args.ranges else None,
        recovery=tuple(getattr(args, "recovery", ()) or ()),
        wide=tuple(getattr(args, "a16", ()) or ()),
        algo=getattr(args, "algo", "rtn"),
        block_size=getattr(args, "block_size", 32),
        eight_bit=tuple(getattr(args, "bits8", ()) or ()),
        embeddings=bool(getattr(args, "int4_embeddings", False)),
        save_ranges=str(args.save_ranges) if args.save_ranges else None,
        optimize=args.optimize,
        self_check=args.self_check,
        progress=not (args.json or args.quiet),
        overrides=str(args.overrides) if getattr(args, "overrides", None) else None,
    )
    guard = None
    if getattr(args, "guard", False) and guard_applies(args.mode, args.self_check, args.include) and not args.ranges:
        model, report, guard = quantize_guarded(model, args.calib, time_limit_s=args.time_limit,
                                                method=args.method, method_options=options, **kwargs)
    else:
        model, report = quantize(model, args.calib, method=args.method, method_options=options, **kwargs)
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    with stderr.status(f"saving {args.output}"):
        save_model(model, args.output, external_data=external)
    doc = report.to_json()
    doc.update(input=str(args.model), output=str(args.output),
               size_bytes={"input": _size(args.model), "output": _size(args.output)})
    if getattr(args, "qnn_context", False):
        doc["qnn_context"] = _qnn_context(model, args)
    if guard is not None:
        doc["guard"] = guard.to_json()
        doc["within_floor"] = guard.within_floor
    verdict = _gate(args, doc, accuracy=True)
    if args.json:
        print_json(doc)
    elif not args.quiet:
        if getattr(args, "verbose", False) and report.self_check is not None:
            doc["self_check"]["lines"] = report.self_check.lines(verbose=True)
        for line in summary_lines(doc):
            out.print(line, markup=False)
        for line in guard.lines() if guard is not None else []:
            out.print(line, markup=False)
    if verdict is not None and not args.json:
        out.print(verdict.line, markup=False)
    return 0 if verdict is None or verdict.passed else 1


def _check_gate(args: argparse.Namespace) -> None:
    """Refuses gate flags that cannot be measured, before any work is done."""
    from onnxq.errors import OptionError
    from onnxq.validation.bench import parse_size

    if getattr(args, "max_size", None) is not None:
        parse_size(args.max_size)
    dynamic_drop = getattr(args, "max_accuracy_drop", None) is not None and args.mode != "static"
    if (dynamic_drop or getattr(args, "min_speedup", None) is not None) and (args.data or args.calib) is None:
        raise OptionError("--max-accuracy-drop / --min-speedup need samples to measure on: give --data PATH")
    if args.data is not None and not args.data.exists():
        raise OptionError(f"--data {args.data}: no such file or folder")


def _gate(args: argparse.Namespace, doc: dict[str, Any], *, accuracy: bool) -> Any:
    """The acceptance gate on the written output against the input; ``None`` without criteria.

    ``accuracy``: also judge ``--max-accuracy-drop`` (the mixed-precision path meets it itself).
    """
    from onnxq.validation.bench import parse_size
    from onnxq.validation.compare import gate_files

    drop = getattr(args, "max_accuracy_drop", None) if accuracy else None
    min_speedup = getattr(args, "min_speedup", None)
    max_size = parse_size(args.max_size) if getattr(args, "max_size", None) is not None else None
    if drop is None and min_speedup is None and max_size is None:
        return None
    with stderr.status("gate: measuring the output against the input"):
        verdict, figures = gate_files(args.model, args.output, args.data or args.calib, labels=args.labels,
                                      metric=args.metric, max_accuracy_drop=drop, min_speedup=min_speedup,
                                      max_size=max_size)
    doc["gate"] = figures
    return verdict


def _run_mixed(args: argparse.Namespace, out: Any) -> int:
    """``--max-accuracy-drop`` with calibration: the mixed-precision search meets the budget."""
    import os

    from onnxq.errors import OptionError
    from onnxq.quantization.mixed_precision import plot_curve, quantize_mixed, save_overrides

    if args.percentile is not None:
        raise OptionError("--percentile is not supported with --max-accuracy-drop yet; use --method minmax|entropy|mse")
    if args.labels is not None and args.data is None:
        raise OptionError("--labels needs --data PATH (the samples they label)")
    if args.labels is not None and not args.labels.is_file():
        raise OptionError(f"--labels {args.labels}: no such file")
    overrides = str(args.overrides) if args.overrides is not None else None
    cache = args.cache_dir
    if cache is None:
        beside = args.ranges or args.save_ranges
        cache = (beside.parent / ".onnxq-cache") if beside is not None else Path(
            os.environ.get("ONNXQ_CACHE_DIR") or Path.home() / ".cache" / "onnxq")
    with stderr.status(f"loading {args.model}"):
        model = load_model(args.model)
    with executor_from_args(args) as executor:
        model, mixed = quantize_mixed(
            model, args.calib, max_accuracy_drop=args.max_accuracy_drop, target=args.target, method=args.method,
            per_channel=args.per_channel, cpu=args.cpu, exclude=args.exclude, overrides=overrides,
            ranges=str(args.ranges) if args.ranges else None,
            save_ranges=str(args.save_ranges) if args.save_ranges else None,
            data=args.data, labels=args.labels, metric=args.metric, optimize=args.optimize,
            self_check=args.self_check, cache_dir=cache, progress=not (args.json or args.quiet),
            executor=executor)
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    with stderr.status(f"saving {args.output}"):
        save_model(model, args.output, external_data=external)
    if args.save_overrides is not None:
        save_overrides(args.save_overrides, mixed)
    if args.curve is not None:
        plot_curve(mixed, args.curve)
    doc = mixed.quantize.to_json()
    doc.update(input=str(args.model), output=str(args.output), mixed=mixed.to_json(),
               size_bytes={"input": _size(args.model), "output": _size(args.output)})
    verdict = _gate(args, doc, accuracy=False)
    if args.json:
        print_json(doc)
    elif not args.quiet:
        for line in [*summary_lines(doc), *mixed.lines()]:
            out.print(line, markup=False)
    if verdict is not None and not args.json:
        out.print(verdict.line, markup=False)
    # NOTE: exit 1 when no assignment meets the budget, like the other gates: the model is still written.
    return 0 if mixed.met and (verdict is None or verdict.passed) else 1


def _size(path: Path) -> int:
    """Bytes on disk with the external-data files the model references (whatever their names)."""
    from onnxq.validation.bench import model_size

    return model_size(path)


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
