"""convert-opset{opset=N}: convert the default-domain opset with onnx's version converter.

The converter runs on a copy without large initializers (they become inputs and
are reattached by name), so big models stay lazy. Its output is checked (onnx
checker + strict shape inference); where it produced an invalid model, or cannot
convert an op, the pass refuses with the reason and leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import onnx
import onnx_ir as ir

from onnxq.errors import OptionError, UserError, first_line
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.interop import call_onnx, replace_contents

#: onnx's version converter does not support opsets older than this.
MIN_OPSET = 7


class OpsetConversionError(UserError):
    """onnx's converter cannot convert this model to the requested opset."""


class ConvertOpset(Pass):
    name: ClassVar[str] = "convert-opset"
    summary: ClassVar[str] = "Convert the model to another ai.onnx opset (checked; refuses invalid results)"

    @dataclasses.dataclass(frozen=True)
    class Options:
        opset: int = dataclasses.field(default=0, metadata={"help": "target ai.onnx opset (required)"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        target = self.options.opset
        latest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= target <= latest:
            raise OptionError(
                f"pass 'convert-opset': opset={target} is out of range; give {MIN_OPSET}..{latest}"
            )
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        if current is None:
            raise OpsetConversionError("convert-opset: the model does not import the ai.onnx opset")
        if current == target:
            return PassResult(False)
        if model.functions:
            # NOTE: onnx's converter drops model-local functions without a word.
            names = ", ".join(sorted(f.name for f in model.functions.values()))
            raise OpsetConversionError(
                f"convert-opset: the model has local functions ({names}) that onnx's converter "
                "would drop; inline them first; model left unchanged"
            )
        big = {name: v for name, v in model.graph.initializers.items()}

        def convert(proto: onnx.ModelProto) -> onnx.ModelProto:
            converted = onnx.version_converter.convert_version(proto, target)
            onnx.checker.check_model(converted)
            onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
            return converted

        try:
            converted = call_onnx(convert, model)
        except Exception as e:  # noqa: BLE001  # the converter raises RuntimeError, ValidationError, ...
            reason = first_line(e)
            raise OpsetConversionError(
                f"convert-opset: cannot convert opset {current} -> {target}: {reason}; model left unchanged"
            ) from None
        new = ir.serde.deserialize_model(converted)
        _reattach_initializers(new, big, original_inputs={v.name for v in model.graph.inputs})
        replace_contents(model, new)
        return PassResult(True, {"from_opset": current, "to_opset": target})


def _reattach_initializers(new: ir.Model, originals: dict[str, ir.Value], original_inputs: set[str | None]) -> None:
    """Turns the inputs that stood in for stripped initializers back into initializers."""
    kept_inputs = []
    for value in new.graph.inputs:
        source = originals.get(value.name or "")
        if source is not None and source.const_value is not None:
            value.const_value = source.const_value
            if value.name not in new.graph.initializers:
                new.graph.register_initializer(value)
        if value.name in original_inputs:
            kept_inputs.append(value)
    new.graph.inputs.clear()
    new.graph.inputs.extend(kept_inputs)
