"""Pipeline: an ordered list of passes that is itself a pass.

A pipeline runs its passes in order, calls the instrumentation hooks around each
leaf pass, and can repeat until no pass changes the model (``fixpoint``). It
prints as pipeline text (``a,b{x=1},fixpoint(c,d)``) that parses back to an
equal pipeline (see :mod:`onnxq.framework.text`) and writes to a TOML file.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import onnx_ir as ir

from onnxq.errors import OnnxqError, OptionError, PassFailedError
from onnxq.framework.base import Diagnostic, Pass, PassResult, Severity, format_option
from onnxq.framework.context import PassContext

logger = logging.getLogger(__name__)

#: metadata_props key where the pipeline text that produced a model is recorded.
PIPELINE_METADATA_KEY = "onnxq.pipeline"


class Pipeline(Pass):
    """Runs passes in order; with ``fixpoint`` repeats them until nothing changes."""

    name: ClassVar[str] = "pipeline"
    summary: ClassVar[str] = "Run passes in order"

    @dataclasses.dataclass(frozen=True)
    class Options:
        fixpoint: bool = dataclasses.field(
            default=False, metadata={"help": "repeat until no pass changes the model"}
        )
        max_iterations: int = dataclasses.field(
            default=10, metadata={"help": "upper bound on repetitions with fixpoint"}
        )

        def __post_init__(self) -> None:
            if self.max_iterations < 1:
                raise OptionError(f"pipeline option max_iterations={self.max_iterations} must be >= 1")

    def __init__(
        self,
        passes: Iterable[Pass] = (),
        options: Any = None,
        *,
        label: str | None = None,
        defaults: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(options, **kwargs)
        self.passes: tuple[Pass, ...] = tuple(passes)
        #: Name of the preset this pipeline came from; it prints as that name.
        self.label = label
        self._defaults = defaults if defaults is not None else self.Options()

    def changed_options(self) -> dict[str, Any]:
        return {
            f.name: getattr(self.options, f.name)
            for f in dataclasses.fields(self.options)
            if getattr(self.options, f.name) != getattr(self._defaults, f.name)
        }

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        stats: collections.Counter[str] = collections.Counter()
        diagnostics: list[Diagnostic] = []
        modified_any = False
        rounds = self.options.max_iterations if self.options.fixpoint else 1
        for _ in range(rounds):
            modified_round = False
            for child in self.passes:
                result = run_one(child, model, ctx)
                modified_round |= result.modified
                for key, value in result.stats.items():
                    stats[key if isinstance(child, Pipeline) else f"{child.name}.{key}"] += value
                diagnostics.extend(result.diagnostics)
            modified_any |= modified_round
            if not modified_round:
                break
        else:
            if self.options.fixpoint and rounds > 1:
                diagnostics.append(
                    Diagnostic(
                        f"{self} still changed the model after max_iterations={rounds}",
                        Severity.WARNING,
                    )
                )
        return PassResult(modified_any, dict(stats), tuple(dict.fromkeys(diagnostics)))

    def __str__(self) -> str:
        opts = self.options_text()
        opts = f"{{{opts}}}" if opts else ""
        if self.label is not None:
            return f"{self.label}{opts}"
        body = ",".join(str(p) for p in self.passes)
        if self.options.fixpoint:
            extra = {k: v for k, v in self.changed_options().items() if k != "fixpoint"}
            args = ",".join(f"{k}={format_option(v)}" for k, v in extra.items())
            return f"fixpoint{{{args}}}({body})" if args else f"fixpoint({body})"
        return f"pipeline{opts}({body})" if opts else body

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Pipeline)
            and other.options == self.options
            and other.passes == self.passes
            and other.label == self.label
        )

    def __hash__(self) -> int:
        return hash((self.options, self.passes, self.label))


def run_one(pass_: Pass, model: ir.Model, ctx: PassContext) -> PassResult:
    """Runs one pass with instrumentation; wraps unexpected exceptions with the pass name."""
    if isinstance(pass_, Pipeline):
        return pass_.run(model, ctx)
    for needed in pass_.needs:
        ctx.resource(needed)
    try:
        for hook in ctx.instrumentations:
            hook.before_pass(pass_, model, ctx)
        result = pass_.run(model, ctx)
        if result.modified:
            ctx.invalidate()
        for hook in ctx.instrumentations:
            hook.after_pass(pass_, model, result, ctx)
    except Exception as e:
        _notify_failure(pass_, model, e, ctx)
        if isinstance(e, OnnxqError):
            raise
        raise PassFailedError(pass_.name, f"{type(e).__name__}: {e}") from e
    return result


def _notify_failure(pass_: Pass, model: ir.Model, error: Exception, ctx: PassContext) -> None:
    for hook in ctx.instrumentations:
        try:
            hook.on_failure(pass_, model, error, ctx)
        except Exception:  # noqa: BLE001  # a failing hook must not hide the pass's error
            logger.warning("instrumentation %s failed while handling an error", type(hook).__name__, exc_info=True)


def apply(
    model: ir.Model, pipeline: Pass, ctx: PassContext | None = None, *, stamp: bool = True
) -> PassResult:
    """Runs a pipeline (or a single pass) on ``model`` and records its text in the metadata."""
    ctx = ctx if ctx is not None else PassContext()
    pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline([pipeline])
    for hook in ctx.instrumentations:
        hook.before_pipeline(pipeline, model, ctx)
    result = pipeline.run(model, ctx)
    for hook in ctx.instrumentations:
        hook.after_pipeline(pipeline, model, result, ctx)
    if stamp and result.modified:
        history = model.metadata_props.get(PIPELINE_METADATA_KEY)
        text = str(pipeline)
        model.metadata_props[PIPELINE_METADATA_KEY] = f"{history};{text}" if history else text
    return result
