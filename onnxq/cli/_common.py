"""Helpers shared by CLI commands: output checks, JSON printing, the progress display."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from onnxq.ir.io import check_output_path

#: Human output goes to stderr when --json owns stdout.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def console(as_json: bool) -> Console:
    return stderr if as_json else Console(highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def check_output(source: Path, output: Path, *, in_place: bool = False) -> None:
    """Refuses a bad output (the input itself, a folder, a missing folder) before any work is done."""
    check_output_path(output, source=source if source.exists() else None, in_place=in_place)


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """``--executor local|ray`` and ``--ray-address`` (with ``--jobs`` for the local pool)."""
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where the parallel work runs: this machine's processes (--jobs) or a Ray cluster "
                        "(pip install 'onnxq[ray]')")
    p.add_argument("--ray-address", metavar="auto|ADDR",
                   help="--executor ray: a running cluster ('auto', HOST:PORT, ray://HOST:PORT); default: "
                        "start a local one with --jobs CPUs (all when 1)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the arguments name (a Ray one connects now: a missing Ray is exit 2 here)."""
    from onnxq.framework.executor import make_executor

    return make_executor(getattr(args, "executor", "local"), jobs=getattr(args, "jobs", 1),
                         address=getattr(args, "ray_address", None))
