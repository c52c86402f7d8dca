"""RewritePass: an onnxq pass made of onnxscript rewrite rules, with stats and near-miss reports.

onnxscript's ``RewriteRuleSet.apply_to_model`` already walks the main graph, every
If/Loop/Scan body and every local function, and tags each node it creates with
``RULE_NAME_TAG``. What it lacks, and this module adds:

- per-rule counts (each rule is applied as its own rule set, in the pass's order);
- an opset gate: a rule declares the lowest opset at which the nodes it emits are valid,
  and is skipped below it with a diagnostic (the shipped rules never check this);
- near misses from ``MatchingTracer`` turned into one line per miss
  (``fold-batchnorm: BatchNormalization_7: Conv output has 2 consumers``), with the
  matcher's generic "other uses" reason replaced by the value that has them;
- checks shared by all rules: a rewrite must not create initializers in a subgraph or
  function for weights that live in an outer scope (ONNX names are single-assignment
  across scopes), see :func:`local_constant`;
- initializers that only the rewritten nodes used are dropped, so a pass run alone leaves
  no dead weights behind.

Known limit (onnxscript's): a rewrite that creates initializers (folded weights) is
skipped inside a model-local function, which cannot hold initializers; rules that only
rewire (transposes, reshapes, activations, GELU) apply there too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RULE_NAME_TAG, MatchingTracer, MatchStatus, RewriteRule, RewriteRuleSet

from onnxq.framework.base import Diagnostic, Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import fingerprint
from onnxq.passes.cleanup._graphs import all_graphs

logger = logging.getLogger(__name__)

_OTHER_USES = "Matched nodes have other uses preventing replacement."


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rewrite rule of a pass: the onnxscript rule, the stat it counts into, its opset floor."""

    rule: RewriteRule
    stat: str
    min_opset: int = 1
    commute: bool = False
    #: Op types the pattern contains; the rule is skipped when the model lacks one (matching is costly).
    needs_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # NOTE: a rule that keeps its matched nodes makes onnxscript run remove_unused_nodes over
        # the whole model (touching what no rule matched); removing them at match time instead
        # also makes the matcher decline when a matched node has other consumers.
        self.rule.remove_nodes = True

    @property
    def name(self) -> str:
        return str(self.rule.name)


@dataclasses.dataclass(frozen=True)
class Miss:
    """A place where a rule nearly matched, and why it did not fire."""

    pass_name: str
    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pass_name}: {self.node}: {self.reason}"


class RewritePass(Pass):
    """Base of the fusion passes: subclasses return their rules from :meth:`rules`."""

    #: Stats reported even when zero would hide nothing; keys are the Rule.stat values.
    stat_names: ClassVar[tuple[str, ...]] = ()

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        """The rules, built fresh per run (shipped rule classes keep match state on ``self``)."""
        raise NotImplementedError

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        opset = model_opset(model)
        counts: dict[str, int] = {}
        diagnostics: list[Diagnostic] = []
        # NOTE: measured, not guessed: a rule set with a rule that keeps matched nodes also runs
        # onnxscript's remove_unused_nodes over the whole model, which drops unused initializers.
        before = fingerprint(model)
        used_before = _used_initializers(model)
        present = _op_types(model)
        for entry in self.rules(model):
            if not present.issuperset(entry.needs_ops):
                continue
            if opset < entry.min_opset:
                diagnostics.append(
                    Diagnostic(f"{entry.name} skipped: it needs opset >= {entry.min_opset}, the model has {opset}")
                )
                continue
            applied = RewriteRuleSet([entry.rule], commute=entry.commute).apply_to_model(model)
            if applied:
                counts[entry.stat] = counts.get(entry.stat, 0) + applied
                present = _op_types(model)  # NOTE: a later rule may match what this one created.
        if counts:
            _remove_own_identities(model, self.name)
            _drop_dead_initializers(model, used_before)
        return PassResult(fingerprint(model) != before, counts, tuple(dict.fromkeys(diagnostics)))

    def explain(self, model: ir.Model) -> list[Miss]:
        """Near misses of every rule on ``model`` (unchanged), best first per rule."""
        opset = model_opset(model)
        misses: list[Miss] = []
        present = _op_types(model)
        seen: set[tuple[str, str]] = set()

        def add(rule: str, node: str, reason: str) -> None:
            # NOTE: one line per place and reason, even when several rules of the pass report it.
            if (node, reason) not in seen:
                seen.add((node, reason))
                misses.append(Miss(self.name, rule, node, reason))

        for entry in self.rules(model):
            absent = [op for op in entry.needs_ops if op not in present]
            if absent:
                add(entry.name, "model", f"no {absent[0]} node")
                continue
            if opset < entry.min_opset:
                add(entry.name, "model", f"needs opset >= {entry.min_opset}, model has {opset}")
                continue
            tracer = MatchingTracer()
            RewriteRuleSet([entry.rule], commute=entry.commute).apply_to_model(model, tracer=tracer)
            for matches in tracer.best_matches_map.values():
                for info in matches:
                    if info.status != MatchStatus.SUCCESS:
                        reason = _reason(info.match_result, info.root_node) or info.status.name.lower().replace("_", " ")
                        add(entry.name, node_label(info.root_node), reason)
        return misses


def named(rule: RewriteRule, name: str) -> RewriteRule:
    """The rule, renamed: the name is what new nodes record in RULE_NAME_TAG and what --explain takes."""
    rule.name = name
    return rule


def model_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.graph.opset_imports.get("", 1)))


def node_label(node: ir.Node) -> str:
    """The node's name, else ``OpType_index`` by its position in its graph."""
    if node.name:
        return node.name
    graph = node.graph
    if graph is not None:
        for index, other in enumerate(graph):
            if other is node:
                return f"{node.op_type}_{index}"
    return node.op_type


def _reason(match: Any, root: ir.Node) -> str:
    reason = str(match.reason or "")
    if reason.strip() != _OTHER_USES:
        return reason
    # NOTE: the matcher only says "other uses"; name the intermediate value that has them.
    nodes = set(match.nodes)
    for node in match.nodes:
        if node is root:
            continue  # its outputs are the pattern's outputs; their consumers are expected
        for value in node.outputs:
            users = [user for user, _ in value.uses()]
            if any(u not in nodes for u in users) or value.is_graph_output():
                consumers = len(users) + int(value.is_graph_output())
                return f"{node.op_type} output '{value.name}' has {consumers} consumers"
    return reason


def local_constant(value: ir.Value | None, graph: ir.Graph | ir.Function) -> np.ndarray | None:
    """The value's constant array when it is an initializer of ``graph`` itself (not an outer scope's)."""
    if value is None or value.const_value is None or not value.is_initializer():
        return None
    if value.graph is not graph:
        return None
    return value.const_value.numpy()


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of an initializer or a Constant node's output, else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _remove_own_identities(model: ir.Model, pass_name: str) -> None:
    """Removes the Identity nodes this pass's rules created (a cancelled pair leaves one)."""
    from onnx_ir.passes.common import IdentityEliminationPass

    from onnxq.passes.cleanup.remove_identity import _safe

    inner = IdentityEliminationPass()
    for graph in list(iter_graphs(model)):
        for node in list(graph):
            tag = node.metadata_props.get(RULE_NAME_TAG, "")
            if node.op_type == "Identity" and tag.startswith(pass_name) and _safe(node, graph):
                # NOTE: private per-node routine of onnx_ir's pass, as remove-identity uses it.
                inner._try_eliminate_identity_node(node)


def _op_types(model: ir.Model) -> set[str]:
    return {node.op_type for graph in iter_graphs(model) for node in graph}


def _used_initializers(model: ir.Model) -> list[tuple[ir.Graph, ir.Value]]:
    return [(g, v) for g in model.graphs() for v in g.initializers.values() if v.uses()]


def _drop_dead_initializers(model: ir.Model, used_before: list[tuple[ir.Graph, ir.Value]]) -> None:
    for graph, value in used_before:
        name = value.name
        if (
            name is not None
            and graph.initializers.get(name) is value
            and not value.uses()
            and not value.is_graph_output()
            and value not in graph.inputs
        ):
            del graph.initializers[name]


def iter_graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    yield from all_graphs(model)


def add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer of ``graph`` holding ``array``, named ``base`` or ``base_N``."""
    name = fresh_name(graph, base)
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


def drop_unused_initializers(graph: ir.Graph, values: Sequence[ir.Value | None]) -> None:
    """Removes those of ``values`` that are initializers of ``graph`` nothing reads any more."""
    for value in values:
        if value is not None and value.name in graph.initializers and graph.initializers[value.name] is value \
                and not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            graph.initializers.pop(value.name)


def fresh_name(graph: ir.Graph | ir.Function | None, base: str) -> str:
    """``base`` or ``base_N``: a name no initializer of ``graph`` has (NameFixPass settles other clashes)."""
    taken = set(graph.initializers) if isinstance(graph, ir.Graph) else set()
    name, index = base, 1
    while name in taken:
        name = f"{base}_{index}"
        index += 1
    return name
