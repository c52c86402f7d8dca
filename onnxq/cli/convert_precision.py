"""``onnxq convert-precision MODEL --to fp16|bf16 -o OUT``: the model in float16 or bfloat16, checked against float32.

A bfloat16 model is checked through its float32 emulation (onnxruntime's CPU provider has almost
no bfloat16 kernels): float32 arithmetic with every bfloat16 value rounded as it is stored.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.cli._common import check_output, console, print_json

#: Below this SQNR (dB) on any float output the result is written and the command exits 1. bfloat16
#: keeps 8 bits of mantissa where float16 keeps 11 (about 18 dB less per rounding): its floor is lower.
FIDELITY_FLOOR_DB = {"fp16": 30.0, "bf16": 25.0}
#: bfloat16 forms of Conv, MaxPool, HardSwish and most other ops arrive at opset 22.
BF16_OPSET = 22
#: Calibration / check samples read from --calib.
SAMPLES = 32


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("convert-precision",
                       help="weights and compute in float16 or bfloat16, float32 islands where the type "
                            "would overflow or is not there, checked against the float32 model")
    p.add_argument("model", type=Path, help="input float32 .onnx file (never modified)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .onnx file")
    p.add_argument("--to", choices=("fp16", "bf16"), default="fp16",
                   help="the lower float type (bf16: the model goes to opset 22 first, where most ops have "
                        "a bfloat16 form; checked through its float32 emulation)")
    p.add_argument("--calib", type=Path, metavar="PATH",
                   help="samples (.npz or folder, as quantize): tensors whose range overflows fp16 stay float32, "
                        "and the check runs on them (default: generated inputs, no overflow islands)")
    p.add_argument("--block", action="append", default=[], metavar="OP|NAME",
                   help="op type or node name kept in float32 (repeatable)")
    p.add_argument("--keep-norms", action="store_true",
                   help="bf16: normalizations, reductions and softmax stay float32")
    p.add_argument("--no-keep-io-types", dest="keep_io_types", action="store_false",
                   help="graph inputs and outputs in the lower type too (default: they stay float32)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def _sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    from onnxq.validation.self_check import sqnr_db

    return float(sqnr_db(reference.astype(np.float64), actual.astype(np.float64)))


def run(args: argparse.Namespace) -> int:
    import onnx_ir as ir

    from onnxq.calibration import CalibrationData, calibrate
    from onnxq.errors import OptionError
    from onnxq.framework.context import PassContext
    from onnxq.framework.pipeline import Pipeline, apply
    from onnxq.framework.registry import PassRegistry
    from onnxq.ir.interop import copy_model
    from onnxq.ir.io import load_model, save_model
    from onnxq.passes.precision import ConvertBFloat16, ConvertFloat16
    from onnxq.passes.precision._low_precision import emulate
    from onnxq.runtime import random_inputs, session

    check_output(args.model, args.output)
    if args.calib is not None and not args.calib.exists():
        raise OptionError(f"--calib {args.calib}: no such file or folder")
    model = load_model(args.model)
    reference = copy_model(model)
    resources: list[Any] = []
    if args.calib is not None:
        data = CalibrationData.from_source(args.calib).take(SAMPLES)
        feeds = [dict(f) for _, f in data.feeds(model)]
        resources.append(calibrate(model, feeds))
    else:
        feeds = [dict(random_inputs(model, seed=s)) for s in range(4)]
    if args.to == "bf16":
        registry = PassRegistry.default()
        before = ([registry.create("convert-opset", {"opset": str(BF16_OPSET)})]
                  if model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) < BF16_OPSET else [])
        passes = [*before, registry.create("infer-shapes"),
                  ConvertBFloat16(keep_io_types=args.keep_io_types, block=tuple(args.block), keep_norms=args.keep_norms)]
    else:
        if args.keep_norms:
            raise OptionError("--keep-norms is for --to bf16 (fp16 keeps onnxruntime's block list and overflow islands)")
        passes = [ConvertFloat16(keep_io_types=args.keep_io_types, block=tuple(args.block))]
    result = apply(model, Pipeline(passes), PassContext.with_resources(resources))
    # NOTE: the check runs the graph as written (no onnxruntime graph optimizations): onnxruntime 1.32's
    # CPU optimizer crashed (segfault) on a float16 CNN+GRU (the zoo's crnn_ocr) at ORT_ENABLE_ALL.
    low = np.float16 if args.to == "fp16" else np.float32  # NOTE: the emulation reads float32
    ref_sess = session(reference)
    new_sess = session(model) if args.to == "fp16" else session(emulate(model, ir.DataType.BFLOAT16))
    names = [o.name for o in ref_sess.get_outputs()]
    outputs: list[dict[str, Any]] = []
    for name in names:
        refs = [ref_sess.run([name], f)[0] for f in feeds]
        gots = [new_sess.run([name], {k: (v.astype(low) if not args.keep_io_types and v.dtype == np.float32
                                          else v) for k, v in f.items()})[0] for f in feeds]
        if any(r.shape != g.shape for r, g in zip(refs, gots, strict=True)):
            raise OptionError(f"convert-precision: output '{name}' changed shape "
                              f"({refs[0].shape} -> {gots[0].shape}); nothing written")
        row: dict[str, Any] = {"name": name, "dtype": str(gots[0].dtype)}
        if refs[0].dtype.kind == "f":
            finite = all(np.all(np.isfinite(g)) for g in gots)
            row["sqnr_db"] = round(_sqnr(np.concatenate([r.ravel() for r in refs]),
                                         np.concatenate([g.ravel() for g in gots])), 1) if finite else None
        else:
            row["equal"] = all(np.array_equal(r, g) for r, g in zip(refs, gots, strict=True))
        outputs.append(row)
    save_model(model, args.output)
    floor = FIDELITY_FLOOR_DB[args.to]
    below = [o for o in outputs if ("sqnr_db" in o and (o["sqnr_db"] is None or o["sqnr_db"] < floor))
             or o.get("equal") is False]
    doc = {"output": str(args.output), "to": args.to, "samples": len(feeds),
           "samples_source": "calibration" if args.calib else "generated", "stats": dict(result.stats),
           "float32_islands": [{"node": d.node, "why": d.message} for d in result.diagnostics if d.node],
           "outputs": outputs, "size_bytes": args.output.stat().st_size,
           "floor_db": floor, "checked": "onnxruntime" if args.to == "fp16" else "float32 emulation",
           "within_floor": not below}
    if args.json:
        print_json(doc)
    else:
        out = console(False)
        out.print(f"{args.model} -> {args.output} ({args.to}); {doc['samples']} {doc['samples_source']} sample(s)")
        for key, value in sorted(result.stats.items()):
            out.print(f"  {key}: {value}")
        for island in doc["float32_islands"]:
            out.print(f"  float32 island: {island['node']}: {island['why']}")
        for row in outputs:
            figure = f"SQNR {row['sqnr_db']} dB" if "sqnr_db" in row else ("equal" if row["equal"] else "DIFFERENT")
            out.print(f"  output '{row['name']}' ({row['dtype']}): {figure} against float32"
                      + (" (float32 emulation of bfloat16)" if args.to == "bf16" else ""))
        if below:
            out.print(f"BELOW THE FLOOR ({floor:g} dB): "
                      f"{', '.join(o['name'] for o in below)}; --block the ops that lose it, or give --calib")
    return 1 if below else 0
