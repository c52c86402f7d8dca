"""The ``onnxq`` command line: parses arguments, calls the library, prints.

Exit codes: 0 success; 1 internal failure or a failed check; 2 user error (bad
file, option or pass name). User errors print one line to stderr, without a
traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from onnxq.errors import OnnxqError

#: Modules under onnxq.cli, one per command; each has ``add_parser(subparsers)``.
COMMANDS = ("run", "passes", "inspect", "convert", "check", "bench", "optimize", "quantize", "compare", "sweep",
            "export_ort", "convert_precision")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # NOTE: one line and exit code 2, as for every other user error.
        self.exit(2, f"onnxq: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from onnxq import __version__

    parser = _Parser(prog="onnxq", description="ONNX graph transformation and quantization.")
    parser.add_argument("--version", action="version", version=f"onnxq {__version__}")
    _add_global_flags(parser, argparse.SUPPRESS)
    parser.set_defaults(debug=False, quiet=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"onnxq.cli.{name}").add_parser(sub)
    # NOTE: global flags work before or after the command (`onnxq -q run ...`, `onnxq run ... -q`).
    for command_parser in sub.choices.values():
        _add_global_flags(command_parser, argparse.SUPPRESS)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only print errors")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else (logging.ERROR if args.quiet else logging.WARNING),
        format="onnxq: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except OnnxqError as e:
        if args.debug:
            traceback.print_exc()
        print(f"onnxq: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  # last resort: internal failure, exit 1
        if args.debug:
            traceback.print_exc()
        print(f"onnxq: internal error: {type(e).__name__}: {e} (rerun with --debug)", file=sys.stderr)
        return 1
