"""Built-in passes, grouped by intent: cleanup/, fusion/, quantization/, recovery/, precision/."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxq.framework.registry import PassRegistry


def register_builtins(registry: PassRegistry) -> None:
    """Registers every built-in pass and preset into ``registry``."""
    from onnxq.framework.graphsurgeon_pass import GraphSurgeonPass
    from onnxq.passes import cleanup

    registry.register(GraphSurgeonPass)

    for pass_cls in cleanup.PASSES:
        registry.register(pass_cls)
    for preset in cleanup.PRESETS:
        registry.register_preset(preset)

    from onnxq.passes import fusion

    for pass_cls in fusion.PASSES:
        registry.register(pass_cls)
    for preset in fusion.PRESETS:
        registry.register_preset(preset)

    from onnxq.passes import quantization

    for pass_cls in quantization.PASSES:
        registry.register(pass_cls)

    from onnxq.passes.quantization.quantize_dynamic import QuantizeDynamic

    registry.register(QuantizeDynamic)

    from onnxq.passes import recovery

    for pass_cls in recovery.PASSES:
        registry.register(pass_cls)

    from onnxq.passes import precision

    for pass_cls in precision.PASSES:
        registry.register(pass_cls)
