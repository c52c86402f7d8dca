"""Run a user's onnx-graphsurgeon function (``gs.Graph -> gs.Graph``) as a pass.

Many TensorRT users keep such scripts; this adapter puts them in a pipeline with
instrumentation and numeric checks. In text: ``graphsurgeon{fn=pkg.module:func}``
or ``graphsurgeon{fn=path/to/script.py:func}``. graphsurgeon holds all weights in
memory, so this pass is not lazy on multi-GB models.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import onnx_ir as ir

from onnxq.errors import OptionError
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.interop import from_graphsurgeon, replace_contents, to_graphsurgeon

GraphFunction = Callable[[Any], Any]


class GraphSurgeonPass(Pass):
    name: ClassVar[str] = "graphsurgeon"
    summary: ClassVar[str] = "Run an onnx-graphsurgeon function gs.Graph -> gs.Graph as a pass"

    @dataclasses.dataclass(frozen=True)
    class Options:
        fn: str = dataclasses.field(
            default="", metadata={"help": "module:function or file.py:function to call"}
        )

    def __init__(self, options: Any = None, *, function: GraphFunction | None = None, **kwargs: Any) -> None:
        if function is not None and not (options or kwargs):
            kwargs["fn"] = f"{function.__module__}:{function.__qualname__}"
        super().__init__(options, **kwargs)
        self._function = function

    def function(self) -> GraphFunction:
        if self._function is not None:
            return self._function
        return resolve(self.options.fn)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        import onnx_graphsurgeon as gs

        fn = self.function()
        graph = to_graphsurgeon(model)
        # NOTE: compare graphsurgeon's own export before and after: the round trip through
        # graphsurgeon makes new tensor objects even when the function changes nothing.
        before = gs.export_onnx(graph.copy(), do_type_check=False).SerializeToString(deterministic=True)
        result = fn(graph)
        graph = graph if result is None else result
        new = from_graphsurgeon(graph, like=model)
        after = gs.export_onnx(graph, do_type_check=False).SerializeToString(deterministic=True)
        if after == before:
            return PassResult(False)
        replace_contents(model, new)
        return PassResult(True)


def resolve(spec: str) -> GraphFunction:
    """Imports ``module:function`` or ``path/to/file.py:function``."""
    if ":" not in spec:
        raise OptionError(f"pass 'graphsurgeon': fn='{spec}' must look like module:function or file.py:function")
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise OptionError(f"pass 'graphsurgeon': script '{target}' not found")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise OptionError(f"pass 'graphsurgeon': cannot import '{target}': {e}") from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise OptionError(f"pass 'graphsurgeon': '{target}' has no function '{attr}'")
    if not callable(fn):
        raise OptionError(f"pass 'graphsurgeon': '{spec}' is not callable")
    return fn  # type: ignore[return-value]
