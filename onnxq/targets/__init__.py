"""Target profiles: how each execution provider runs a QDQ graph (``get_target("ort-cpu")``)."""

from __future__ import annotations

from onnxq.targets.base import (
    ACTIVATION_INPUTS,
    BIAS_INPUT,
    WEIGHT_INPUT,
    Target,
    UnknownTargetError,
    get_target,
    register_target,
    target_names,
)

#: Names of the built-in targets (``ort-cpu`` is the default).
TARGETS: tuple[str, ...] = target_names()
DEFAULT_TARGET = "ort-cpu"

__all__ = [
    "ACTIVATION_INPUTS",
    "BIAS_INPUT",
    "DEFAULT_TARGET",
    "TARGETS",
    "WEIGHT_INPUT",
    "Target",
    "UnknownTargetError",
    "get_target",
    "register_target",
    "target_names",
]
