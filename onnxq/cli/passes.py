"""``onnxq passes``: list registered passes and presets with their options."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from onnxq.cli._common import console, print_json
from onnxq.framework.base import format_option, option_fields
from onnxq.framework.registry import PassRegistry


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("passes", help="list passes, presets and their options")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def describe(registry: PassRegistry) -> dict[str, Any]:
    passes = []
    for name, cls in registry.pass_classes().items():
        passes.append({
            "name": name,
            "summary": cls.summary,
            "plugin": registry.plugin_origin.get(name),
            "options": [
                {"name": o, "type": getattr(t, "__name__", str(t)), "default": d, "help": h}
                for o, t, d, h in option_fields(cls)
            ],
        })
    presets = [
        {"name": p.name, "summary": p.summary, "passes": [str(x) for x in p.build()], "fixpoint": p.fixpoint}
        for p in registry.presets().values()
    ]
    return {"passes": passes, "presets": presets}


def run(args: argparse.Namespace) -> int:
    info = describe(PassRegistry.default())
    if args.json:
        print_json(info)
        return 0
    out = console(False)
    table = Table(title="passes", show_lines=False)
    # NOTE: names are what users type: never cut or wrapped; the plugin origin gets its own line.
    table.add_column("name", no_wrap=True)
    table.add_column("summary", min_width=32)
    table.add_column("options")
    for p in info["passes"]:
        opts = ", ".join(f"{o['name']}={format_option(o['default'])}" for o in p["options"])
        origin = f"\n[plugin: {p['plugin']}]" if p["plugin"] else ""
        table.add_row(escape(p["name"]), escape(p["summary"] + origin), escape(opts))
    out.print(table)
    for preset in info["presets"]:
        body = ("fixpoint(" if preset["fixpoint"] else "(") + ",".join(preset["passes"]) + ")"
        out.print(f"[bold]{escape(preset['name'])}[/bold] (preset): {escape(preset['summary'])}\n  = {escape(body)}")
    return 0
