"""Pipeline text and TOML files <-> pass specs.

Grammar of pipeline text (MLIR-style)::

    pipeline := item ("," item)*
    item     := NAME ["{" key=value ("," key=value)* "}"] ["(" pipeline ")"]

``value`` runs to the next ``,`` or ``}``; quote it ("...", with ``\"`` and ``\\``
escapes) to include them or keep surrounding spaces.
``fixpoint(...)`` and ``pipeline(...)`` nest a sub-pipeline. A TOML pipeline file
holds ``passes = [...]`` whose items are pipeline text or tables
``{name = "...", options = {...}, passes = [...]}``, plus optional top-level
``fixpoint`` / ``max_iterations``.
"""

from __future__ import annotations

import dataclasses
import re

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path
from typing import Any

from onnxq.errors import OptionError

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclasses.dataclass
class Spec:
    """One pipeline item before it is resolved against a registry."""

    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    children: list[Spec] | None = None


def parse_text(text: str) -> list[Spec]:
    """Parses pipeline text into specs; raises OptionError pointing at the bad column."""
    parser = _Parser(text)
    specs = parser.items()
    if parser.pos != len(text):
        parser.fail("unexpected character")
    return specs


def parse_toml(path: Path) -> Spec:
    """Reads a pipeline TOML file into a single top-level spec named ``pipeline``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{path}: pipeline file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OptionError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise OptionError(f"{path}: cannot read the pipeline file ({e.strerror})") from None
    data = data.get("pipeline", data)
    if not isinstance(data, dict):
        raise OptionError(f"{path}: 'pipeline' must be a table with a 'passes' list")
    return _spec_from_table({"name": "pipeline", **data}, f"{path}")


def _spec_from_table(table: Any, where: str) -> Spec:
    if isinstance(table, str):
        specs = parse_text(table)
        return specs[0] if len(specs) == 1 else Spec("pipeline", {}, specs)
    if not isinstance(table, dict):
        raise OptionError(f"{where}: pipeline entries must be text or tables")
    unknown = set(table) - {"name", "options", "passes", "pipeline", "fixpoint", "max_iterations"}
    if unknown:
        raise OptionError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = table.get("name")
    if not isinstance(name, str):
        raise OptionError(f"{where}: every pass table needs a 'name'")
    if not isinstance(table.get("options", {}), dict):
        raise OptionError(f"{where}: 'options' of '{name}' must be a table")
    options = dict(table.get("options", {}))
    for key in ("fixpoint", "max_iterations"):
        if key in table:
            options[key] = table[key]
    children = None
    if "pipeline" in table:
        children = parse_text(str(table["pipeline"]))
    elif "passes" in table:
        if not isinstance(table["passes"], list):
            raise OptionError(f"{where}: 'passes' must be a list")
        children = [_spec_from_table(item, f"{where} passes[{i}]") for i, item in enumerate(table["passes"])]
    return Spec(name, options, children)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> None:
        raise OptionError(f"pipeline text {self.text!r}: {what} at column {self.pos + 1}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def items(self) -> list[Spec]:
        specs = [self.item()]
        while self.peek() == ",":
            self.pos += 1
            specs.append(self.item())
        return specs

    def item(self) -> Spec:
        self.skip_space()
        match = _NAME.match(self.text, self.pos)
        if not match:
            self.fail("expected a pass name")
        assert match is not None
        self.pos = match.end()
        spec = Spec(match.group())
        if self.peek() == "{":
            self.pos += 1
            spec.options = self.options()
        if self.peek() == "(":
            self.pos += 1
            spec.children = self.items()
            if self.peek() != ")":
                self.fail("expected ')'")
            self.pos += 1
        return spec

    def options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.peek() == "}":
            self.pos += 1
            return opts
        while True:
            self.skip_space()
            match = _NAME.match(self.text, self.pos)
            if not match:
                self.fail("expected an option name")
            assert match is not None
            self.pos = match.end()
            if self.peek() != "=":
                self.fail(f"expected '=' after option '{match.group()}'")
            self.pos += 1
            opts[match.group()] = self.value()
            nxt = self.peek()
            self.pos += 1
            if nxt == "}":
                return opts
            if nxt != ",":
                self.pos -= 1
                self.fail("expected ',' or '}'")

    def value(self) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            chars = []
            self.pos += 1
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                chars.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                self.fail("unterminated quote")
            self.pos += 1
            return "".join(chars)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",}":
            self.pos += 1
        return self.text[start : self.pos].strip()
