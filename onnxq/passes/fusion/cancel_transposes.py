"""cancel-transposes: ``Transpose(Transpose(x))`` merged into one, or removed when they cancel.

onnxscript's shipped ``transpose_transpose`` rule does both, but leaves an ``Identity``
where the pair cancels; the shipped ``no_op_transpose`` rule also leaves one for an identity
permutation. The base pass removes such an Identity at once (as remove-identity
does), so a pass run alone does not leave it behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import onnx_ir as ir
from onnxscript.rewriter.rules.common import _basic_rules

from onnxq.passes.fusion._rewrite import RewritePass, Rule


class CancelTransposes(RewritePass):
    name: ClassVar[str] = "cancel-transposes"
    summary: ClassVar[str] = "Cancel or merge consecutive Transposes"

    def rules(self, model: ir.Model) -> Sequence[Rule]:
        return (
            Rule(_basic_rules.TransposeTranspose.rule(name="cancel-transposes"), "transposes_merged", needs_ops=("Transpose",)),
            Rule(_basic_rules.TransposeIdentity.rule(name="cancel-transposes:identity-perm"), "transposes_merged",
                 needs_ops=("Transpose",)),
        )
