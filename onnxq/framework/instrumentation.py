"""Instrumentation hooks around passes: verify-each, timing, numeric-check-each, dump-after-change.

Hooks see every leaf pass of a pipeline (before, after, on failure) and may raise
to stop the pipeline; the error names the pass responsible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.errors import NumericMismatchError, PassFailedError, VerificationError, first_line

if TYPE_CHECKING:
    from onnxq.framework.base import Pass, PassResult
    from onnxq.framework.context import PassContext

logger = logging.getLogger(__name__)


class Instrumentation:
    """Base class; override the hooks you need."""

    def before_pipeline(self, pipeline: Pass, model: ir.Model, ctx: PassContext) -> None:
        """Called once before the top-level pipeline runs."""

    def after_pipeline(self, pipeline: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        """Called once after the top-level pipeline ran."""

    def before_pass(self, pass_: Pass, model: ir.Model, ctx: PassContext) -> None:
        """Called before each leaf pass."""

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        """Called after each leaf pass that returned normally."""

    def on_failure(self, pass_: Pass, model: ir.Model, error: BaseException, ctx: PassContext) -> None:
        """Called when a leaf pass raised."""


def fingerprint(model: ir.Model) -> str:
    """A digest of the model's structure without reading tensor data (external data stays lazy)."""
    h = hashlib.sha256()
    h.update(repr((model.ir_version, model.doc_string, model.producer_name, model.producer_version)).encode())
    h.update(repr(sorted(model.opset_imports.items())).encode())
    h.update(repr(sorted(model.metadata_props.items())).encode())
    graphs: list[ir.Graph | ir.Function] = list(model.graphs())
    for function in model.functions.values():
        graphs.append(function)
    for graph in graphs:
        h.update(f"G{graph.name}|{graph.doc_string}|{sorted(graph.opset_imports.items())}".encode())
        for value in graph.inputs:
            h.update(f"i{value.name}{value.type}{value.shape}".encode())
        for value in graph.outputs:
            h.update(f"o{value.name}{value.type}{value.shape}".encode())
        if isinstance(graph, ir.Graph):
            # NOTE: initializer order carries no meaning (onnx's C API helpers reorder them).
            for name, value in sorted(graph.initializers.items()):
                tensor = value.const_value
                h.update(f"w{name}{value.dtype}{value.shape}{id(tensor)}".encode())
        for node in graph:
            h.update(f"n{node.name}|{node.domain}|{node.op_type}|{node.overload}|{node.doc_string}".encode())
            h.update(repr([(v.name, v.type, v.shape) if v is not None else None for v in node.inputs]).encode())
            h.update(repr([(v.name, v.type, v.shape) for v in node.outputs]).encode())
            for attr in node.attributes.values():
                if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    h.update(f"a{attr.name}:graph".encode())
                elif attr.type == ir.AttributeType.TENSOR:
                    h.update(f"a{attr.name}:{id(attr.value)}".encode())
                else:
                    h.update(f"a{attr.name}:{attr.value!r}".encode())
    return h.hexdigest()


class VerifyEach(Instrumentation):
    """After each pass: onnx checker + strict shape inference; also enforces the modified contract."""

    def __init__(self, *, full_check: bool = True) -> None:
        self.full_check = full_check
        self._before: str | None = None

    def before_pass(self, pass_: Pass, model: ir.Model, ctx: PassContext) -> None:
        self._before = fingerprint(model)

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        if not result.modified and fingerprint(model) != self._before:
            raise PassFailedError(pass_.name, "reported modified=False but changed the model")
        if result.modified:
            verify(model, pass_name=pass_.name, full_check=self.full_check)


def verify(model: ir.Model, *, pass_name: str = "verify", full_check: bool = True) -> None:
    """onnx checker (+ strict shape inference with ``full_check``) on a model without reading large tensors.

    onnx_ir's public ``CheckerPass`` (it serializes without the large initializers); onnx's
    ``full_check`` is the strict, type-checking shape inference.
    """
    from onnx_ir.passes.common import CheckerPass

    try:
        CheckerPass(full_check=full_check)(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = first_line(e)
        raise VerificationError(pass_name, f"model fails verification: {first}") from e


@dataclasses.dataclass
class PassTiming:
    name: str
    seconds: float
    modified: bool


class Timing(Instrumentation):
    """Records wall time per leaf pass (in run order)."""

    def __init__(self) -> None:
        self.records: list[PassTiming] = []
        self._start = 0.0

    def before_pass(self, pass_: Pass, model: ir.Model, ctx: PassContext) -> None:
        self._start = time.perf_counter()

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        self.records.append(PassTiming(pass_.name, time.perf_counter() - self._start, result.modified))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per pass name: total seconds, runs, runs that changed the model."""
        out: dict[str, dict[str, float]] = {}
        for r in self.records:
            row = out.setdefault(r.name, {"seconds": 0.0, "runs": 0, "changed": 0})
            row["seconds"] += r.seconds
            row["runs"] += 1
            row["changed"] += int(r.modified)
        return out


class NumericCheckEach(Instrumentation):
    """Runs onnxruntime before the pipeline and after each changing pass; stops at the first divergence."""

    def __init__(
        self, inputs: Mapping[str, np.ndarray] | None = None, *, rtol: float = 1e-3, atol: float = 1e-4
    ) -> None:
        self.inputs = dict(inputs) if inputs is not None else None
        self.rtol = rtol
        self.atol = atol
        self.reference: dict[str, np.ndarray] | None = None
        self.checked: list[str] = []

    def before_pipeline(self, pipeline: Pass, model: ir.Model, ctx: PassContext) -> None:
        from onnxq import runtime

        if self.inputs is None:
            # NOTE: generated inputs the untouched model refuses are the user's problem (exit 2).
            self.inputs, self.reference = runtime.runnable_inputs(model)
        else:
            self.inputs = runtime.select_inputs(model, self.inputs)
            self.reference = runtime.run(model, self.inputs)

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        from onnxq import runtime

        if not result.modified:
            return
        assert self.reference is not None and self.inputs is not None
        try:
            got = runtime.run(model, self.inputs)
        except Exception as e:  # noqa: BLE001  # any ORT failure is this pass's fault
            raise NumericMismatchError(pass_.name, f"onnxruntime cannot run the result: {e}") from e
        problems = runtime.compare(self.reference, got, rtol=self.rtol, atol=self.atol)
        if problems:
            raise NumericMismatchError(pass_.name, f"changed the outputs: {problems[0]}")
        self.checked.append(pass_.name)


class DumpAfterChange(Instrumentation):
    """Writes the model to ``folder/NNN-<pass>.onnx`` after every pass that changed it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.count = 0
        self.written: list[Path] = []

    def after_pass(self, pass_: Pass, model: ir.Model, result: PassResult, ctx: PassContext) -> None:
        from onnxq.ir.io import save_model

        if not result.modified:
            return
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.count:03d}-{pass_.name}.onnx"
        save_model(model, path)
        self.written.append(path)
        logger.info("dumped %s", path)


class CrashReproducer(Instrumentation):
    """On a pass failure, writes the pipeline's input model and text to ``folder`` to replay it.

    The input is taken from the file the model was loaded from (the in-memory model is
    already half-transformed), so nothing is kept in memory while the pipeline runs.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._pipeline = ""
        self.written: Path | None = None

    def before_pipeline(self, pipeline: Pass, model: ir.Model, ctx: PassContext) -> None:
        self._pipeline = str(pipeline)

    def on_failure(self, pass_: Pass, model: ir.Model, error: BaseException, ctx: PassContext) -> None:
        from onnxq.ir.io import SOURCE_PATH_KEY, load_model, save_model

        source = model.meta.get(SOURCE_PATH_KEY)
        self.folder.mkdir(parents=True, exist_ok=True)
        if source:
            save_model(load_model(source, check=False), self.folder / "input.onnx")
        command = shlex.join(
            ["onnxq", "run", str(self.folder / "input.onnx"), "-p", self._pipeline, "-o", "out.onnx", "--debug"]
        )
        (self.folder / "reproducer.txt").write_text(
            f"pipeline: {self._pipeline}\nfailed pass: {pass_}\nerror: {type(error).__name__}: {error}\n"
            f"replay: {command}\n",
            encoding="utf-8",
        )
        self.written = self.folder
        logger.warning("crash reproducer written to %s", self.folder)
