"""Helpers shared by CLI commands: output checks, JSON printing, the progress display."""

from __future__ import annotations

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
