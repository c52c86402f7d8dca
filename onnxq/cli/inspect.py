"""``onnxq inspect MODEL``: opsets, signature, op histogram, parameters, subgraphs, external data."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from onnxq.cli._common import console, print_json
from onnxq.ir.io import load_model
from onnxq.ir.summary import summarize


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="describe a model without loading its weights")
    p.add_argument("model", type=Path, help=".onnx file")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def run(args: argparse.Namespace) -> int:
    info = summarize(load_model(args.model))
    info = {"path": str(args.model), **info}
    if args.json:
        print_json(info)
        return 0
    out = console(False)
    out.print(f"[bold]{args.model}[/bold]  ir_version {info['ir_version']}  producer '{info['producer']}'")
    out.print("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    sig = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            shape = "?" if v["shape"] is None else "[" + ", ".join("?" if d is None else str(d) for d in v["shape"]) + "]"
            sig.add_row(kind[:-1], v["name"], str(v["dtype"]), shape)
    out.print(sig)
    ops = Table(title=f"ops ({info['nodes']} nodes)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    out.print(ops)
    params = info["parameters"]
    out.print(f"parameters: {params['count']:,} ({_fmt_bytes(params['bytes'])})")
    for dtype, row in params["by_dtype"].items():
        out.print(f"  {dtype}: {row['count']:,} in {row['tensors']} tensors, {_fmt_bytes(row['bytes'])}")
    for sg in info["subgraphs"]:
        out.print(f"subgraph: {sg['op']} '{sg['node']}'.{sg['attribute']} ({sg['nodes']} nodes)")
    for fn in info["functions"]:
        out.print(f"function: {fn}")
    for loc, row in info["external_data"].items():
        out.print(f"external data: {loc}: {row['tensors']} tensors, {_fmt_bytes(row['bytes'])}")
    return 0
