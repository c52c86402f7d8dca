"""``onnxq optimize MODEL -o OUT [--target T] [--explain RULE]``: the ``optimize`` preset of ``onnxq run``.

Same flags as ``onnxq run`` (verify-each, numeric-check-each, timing, json...). ``--explain``
takes a fusion pass name (``fold-batchnorm``), a rule name (``fold-batchnorm:conv``) or
``all``, and prints, for each of its rules, the nearest misses left in the optimized model
and why each did not fire.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxq.cli.run import add_run_options, run_pipeline
from onnxq.errors import OptionError
from onnxq.passes.fusion import DEFAULT_TARGET, TARGETS, Miss, fusion_passes, optimize_pipeline
from onnxq.passes.fusion._conv_split import ConvSplit
from onnxq.passes.fusion._rewrite import RewritePass

#: Fusion passes with ``explain``: the rewriter's, and those that rewrite single Convs.
Explaining = RewritePass | ConvSplit

#: Near misses printed per rule; the tracer keeps every tie, which can be many on big graphs.
MAX_MISSES_PER_RULE = 5


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("optimize", help="cleanup + fusions to a fixpoint (a preset of 'onnxq run')")
    p.add_argument("model", type=Path, help="input .onnx file (never modified)")
    p.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="runtime the graph is for: picks ops such as Gelu (default: ort-cpu)")
    p.add_argument("--explain", metavar="RULE", action="append", default=[],
                   help="print why RULE (a fusion pass, pass:rule, or 'all') did not fire (repeatable)")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pipeline = optimize_pipeline(args.target)
    selected = select_rules(args.explain, args.target) if args.explain else None
    after = None
    if selected is not None:

        def after(model: ir.Model) -> tuple[dict[str, Any], list[str]]:
            misses = explain(model, selected)
            rows = [{"pass": m.pass_name, "rule": m.rule, "node": m.node, "reason": m.reason} for m in misses]
            return {"explain": rows}, ["near misses:", *(f"  {m}" for m in misses)] if misses else [
                "near misses: none"]

    return run_pipeline(args, pipeline, after=after)


def select_rules(names: list[str], target: str = DEFAULT_TARGET) -> list[tuple[Explaining, str | None]]:
    """(pass, rule name or None for all its rules) for each requested name; unknown names are an OptionError."""
    # NOTE: every fusion pass that can say why it declined: the rewriter's passes and the Conv splits
    passes = [p for p in fusion_passes(target) if isinstance(p, Explaining)]
    by_name = {p.name: p for p in passes}
    chosen: list[tuple[Explaining, str | None]] = []
    for name in names:
        if name == "all":
            chosen.extend((p, None) for p in passes)
            continue
        pass_name, _, rule = name.partition(":")
        if pass_name not in by_name:
            known = ", ".join(sorted(by_name))
            raise OptionError(f"--explain {name}: no fusion pass '{pass_name}' (passes: {known}, or 'all')")
        chosen.append((by_name[pass_name], name if rule else None))
    return chosen


def explain(model: ir.Model, selected: list[tuple[Explaining, str | None]]) -> list[Miss]:
    """Near misses of the selected rules on ``model``, at most MAX_MISSES_PER_RULE per rule."""
    misses: list[Miss] = []
    for pass_, rule in selected:
        found = pass_.explain(model)
        if rule is not None:
            names = {r.name for r in pass_.rules(model)} if isinstance(pass_, RewritePass) else {pass_.name}
            if rule not in names:
                raise OptionError(f"--explain {rule}: pass '{pass_.name}' has no such rule "
                                  f"(rules: {', '.join(sorted(names))})")
            found = [m for m in found if m.rule == rule]
        per_rule: dict[str, int] = {}
        for miss in found:
            per_rule[miss.rule] = per_rule.get(miss.rule, 0) + 1
            if per_rule[miss.rule] <= MAX_MISSES_PER_RULE:
                misses.append(miss)
    return misses
