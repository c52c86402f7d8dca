"""PassContext: what a pass may use besides the model.

Two kinds of things: *analyses*, computed from the model on demand and cached
until a pass reports a change, and *resources*, supplied by the caller
(calibration data, a target profile, sample inputs). Passes declare both in
``analyses`` / ``needs``; the pipeline checks ``needs`` before a pass runs, and
analyses are computed on first use.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import onnx_ir as ir

from onnxq.errors import OptionError

if TYPE_CHECKING:
    from onnxq.framework.instrumentation import Instrumentation

T = TypeVar("T")
R = TypeVar("R", bound="Resource")


class Analysis(abc.ABC, Generic[T]):
    """A fact computed from the model; cached by PassContext until the model changes."""

    @classmethod
    @abc.abstractmethod
    def compute(cls, model: ir.Model) -> T:
        """Computes the analysis result."""


class Resource:
    """Marker base class for caller-supplied inputs of passes (data sets, targets...)."""


@dataclasses.dataclass
class PassContext:
    """Per-run context handed to every pass; holds no model state itself."""

    resources: dict[type[Resource], Resource] = dataclasses.field(default_factory=dict)
    instrumentations: list[Instrumentation] = dataclasses.field(default_factory=list)
    _analyses: dict[type[Analysis[Any]], Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def with_resources(cls, resources: Iterable[Resource] = (), **kwargs: Any) -> PassContext:
        ctx = cls(**kwargs)
        for resource in resources:
            ctx.resources[type(resource)] = resource
        return ctx

    def resource(self, kind: type[R]) -> R:
        """The caller-supplied resource of this type; a clear error when it is missing."""
        for key, value in self.resources.items():
            if issubclass(key, kind):
                return value  # type: ignore[return-value]
        raise OptionError(f"this pipeline needs a {kind.__name__}; supply it to the run")

    def analysis(self, kind: type[Analysis[T]], model: ir.Model) -> T:
        """The cached result of an analysis, computed on first use."""
        if kind not in self._analyses:
            self._analyses[kind] = kind.compute(model)
        return self._analyses[kind]  # type: ignore[no-any-return]

    def invalidate(self) -> None:
        """Drops cached analyses; called after every pass that changed the model."""
        self._analyses.clear()
