"""collapse-reshapes: chains of Reshape / Flatten / Squeeze / Unsqueeze collapsed.

- ``Reshape(R(x), shape)`` where R is any of Reshape, Flatten, Squeeze, Unsqueeze and
  ``shape`` is a constant without 0 entries (or with ``allowzero=1``) -> ``Reshape(x, shape)``:
  every op of the family keeps the row-major element order, so only the last shape counts.
  onnxscript's ``reshape_reshape`` rule covers only Reshape after Reshape, so this rule
  is written here;
- ``Reshape(Transpose(x), shape)`` where the Transpose only moves axes of size 1 (the other
  axes keep their order, so the data order is unchanged) -> ``Reshape(x, shape)`` (no shipped rule);
- ``Unsqueeze(Unsqueeze(x))`` -> one Unsqueeze: the shipped ``unsqueeze_unsqueeze`` rule
  (it declines negative axes);
- a Reshape to the shape its input already has (known static shapes) -> removed;
- a Reshape whose shape is computed at run time (Shape -> Slice -> Concat...) but whose
  output shape is known with at most one symbolic dim: the shipped
  ``materialize_reshape_shape`` rule makes it a constant (``-1`` for the symbolic dim), and
  the shape computation becomes dead. The shipped rewrite adds ``allowzero=1``, an opset-14
  attribute; here a dim of 0 is declined instead (``-1`` could not be inferred next to it), so
  the new shape has no 0 entries, needs no ``allowzero`` and is valid at every opset.

Rules that rely on the Reshape's output shape decline at graph outputs, whose shape may be only
the exporter's (possibly wrong) declaration, unless the input's shape proves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import _basic_rules, _materialize_reshape_shape

from onnxq.passes.fusion._rewrite import RewritePass, Rule, constant, named

_FAMILY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class _ReshapeOfReshapeLike(RewriteRuleClassBase):
    op_type: ClassVar[str] = "Reshape"

    def pattern(self, op, x, shape):  # type: ignore[no-untyped-def]
        inner = getattr(op, self.op_type)(x, _allow_other_inputs=True, _allow_other_attributes=True,
                                          _outputs=["inner"])
        return op.Reshape(inner, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, shape, inner, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        values = constant(shape)
        if values is None:
            return result.fail(f"Reshape shape '{shape.name}' is not constant")
        allowzero = out.producer().attributes.get_int("allowzero", 0)
        if not allowzero and (values == 0).any():
            return result.fail("Reshape shape has 0 entries (copied from its input)")
        return result

    def rewrite(self, op, x, shape, inner, out):  # type: ignore[no-untyped-def]
        return op.Reshape(x, shape, **out.producer().attributes)


class _ReshapeOfTranspose(_ReshapeOfReshapeLike):
    op_type: ClassVar[str] = "Transpose"

    def check(self, context, x, shape, inner, out):  # type: ignore[no-untyped-def]
        result = super().check(context, x, shape, inner, out)
        if not result:
            return result
        perm = inner.producer().attributes.get_ints("perm")
        if perm is None or x.shape is None:
            return result.fail("Transpose perm or input shape is unknown")
        moved = [axis for axis in perm if not (isinstance(x.shape[axis], int) and x.shape[axis] == 1)]
        if moved != sorted(moved):
            return result.fail("Transpose reorders axes larger than 1")
        return result


def _rule(op_type: str) -> Rule:
    cls: type[_ReshapeOfReshapeLike] = type(f"ReshapeOf{op_type}", (_ReshapeOfReshapeLike,), {"op_type": op_type})
    return Rule(cls.rule(name=f"collapse-reshapes:reshape-of-{op_type.lower()}"), "reshapes_collapsed",
                needs_ops=("Reshape", op_type))


class _NoOpReshape(RewriteRuleClassBase):
    def pattern(self, op, x, shape):  # type: ignore[no-untyped-def]
        return op.Reshape(x, shape, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, shape, out):  # type: ignore[no-untyped-def]
        result = MatchResult()
        if x.shape is None or not x.shape.is_static() or out.shape is None or not out.shape.is_static():
            return result.fail("shapes are not static")
        if list(x.shape) != list(out.shape):
            return result.fail("Reshape changes the shape")
        if out.is_graph_output():
            return result.fail("the Reshape output is a graph output (its shape may only be declared)")
        return result

    def rewrite(self, op, x, shape, out):  # type: ignore[no-untyped-def]
        return op.Identity(x)


class _MaterializeShape(_materialize_reshape_shape.MaterializeReshapeShape):
    def check(self, context, data, shape):  # type: ignore[no-untyped-def]
        output = context.output_values[0]
        if output.is_graph_output() and not _same_elements(data.shape, output.shape):
            # NOTE: a graph output's shape may be the exporter's declaration, which can be wrong
            # (a real export declares [1, seqlen] for [T, 1, C]); used only when the input's shape
            # proves it (same named dims, same static product).
            return MatchResult().fail("the Reshape output is a graph output whose shape does not follow "
                                      "from the input's")
        if output.shape is not None and any(isinstance(d, int) and d == 0 for d in output.shape):
            return MatchResult().fail("output shape has a 0 dim")
        return super().check(context, data, shape)

    def rewrite(self, op, data, shape):  # type: ignore[no-untyped-def]
        dims = ir.tensor(self._new_dims, dtype=ir.DataType.INT64)
        return op.Reshape(data, op.Constant(value=dims))


def _same_elements(a: ir.Shape | None, b: ir.Shape | None) -> bool:
    """Whether two shapes provably hold as many elements (named dims matched, static products equal)."""
    if a is None or b is None:
        return False
    names: list[list[str]] = [[], []]
    products = [1, 1]
    for i, shape in enumerate((a, b)):
        for d in shape:
            if isinstance(d, int):
                if d < 0:
                    return False
                products[i] *= d
            elif d.value is None:
                return False
            else:
                names[i].append(str(d.value))
    return products[0] == products[1] and sorted(names[0]) == sorted(names[1])


class CollapseReshapes(RewritePass):
    name: ClassVar[str] = "collapse-reshapes"
    summary: ClassVar[str] = "Collapse Reshape/Flatten/Squeeze/Unsqueeze chains"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (
            *(_rule(op_type) for op_type in _FAMILY),
            Rule(_ReshapeOfTranspose.rule(name="collapse-reshapes:reshape-of-transpose"), "reshapes_collapsed",
                 needs_ops=("Reshape", "Transpose")),
            Rule(_basic_rules.UnsqueezeUnsqueeze.rule(name="collapse-reshapes:unsqueeze-unsqueeze"),
                 "reshapes_collapsed", min_opset=13),
            Rule(_NoOpReshape.rule(name="collapse-reshapes:no-op"), "reshapes_removed"),
            Rule(named(_MaterializeShape.rule(), "collapse-reshapes:materialize-shape"), "reshape_shapes_materialized",
                 needs_ops=("Reshape",)),
        )
