"""Helpers shared by CLI commands: output checks, JSON printing, the progress display."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from onnxq.framework.errors import ModelSaveError

#: Human output goes to stderr when --json owns stdout.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def console(as_json: bool) -> Console:
    return stderr if as_json else Console(highlight=False, soft_wrap=True)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def check_output(source: Path, output: Path, *, in_place: bool = False) -> None:
    """Refuses an output that is the input (unless in_place) before any work is done."""
    if output.exists() and source.exists() and output.resolve() == source.resolve() and not in_place:
        raise ModelSaveError(f"{output}: refusing to overwrite the input; choose another -o or pass --in-place")
    if output.is_dir():
        raise ModelSaveError(f"{output}: is a folder; give a file name for -o")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise ModelSaveError(f"{output}: output folder '{parent}' does not exist")
