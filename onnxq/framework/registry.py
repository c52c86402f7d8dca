"""PassRegistry: names -> pass classes and preset pipelines.

The registry is an object, not a module global: ``PassRegistry.default()`` holds
the built-in passes plus every pass published by an installed package in the
entry-point group ``onnxq.passes`` (the entry point names a Pass subclass, or a
callable returning a list of them). Tests and embedders build their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

from onnxq.errors import OnnxqError, OptionError, UnknownPassError
from onnxq.framework.base import Pass, parse_options
from onnxq.framework.pipeline import Pipeline
from onnxq.framework.text import Spec, parse_text, parse_toml

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxq.passes"
#: Functions ``(registry) -> None`` that register a package's passes and presets. onnxq's
#: built-ins come in this way too (``onnxq.passes:register_builtins``), so the framework
#: never imports the passes built on it.
REGISTRAR_GROUP = "onnxq.registrars"
NESTING_NAMES = ("pipeline", "fixpoint")
BUILTINS = "onnxq.passes:register_builtins"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named pipeline (e.g. ``cleanup``), built fresh each time it is used."""

    name: str
    summary: str
    build: Callable[[], list[Pass]]
    fixpoint: bool = True
    max_iterations: int = 10

    def defaults(self) -> Pipeline.Options:
        return Pipeline.Options(fixpoint=self.fixpoint, max_iterations=self.max_iterations)


class PassRegistry:
    """Maps names to pass classes and presets; parses pipeline text and TOML."""

    def __init__(self) -> None:
        self._passes: dict[str, type[Pass]] = {}
        self._presets: dict[str, Preset] = {}
        #: Where each plugin-provided name came from (distribution name).
        self.plugin_origin: dict[str, str] = {}

    @classmethod
    def default(cls) -> PassRegistry:
        """Built-in passes and presets plus the ``onnxq.passes`` entry points."""
        registry = cls()
        registrars = sorted(metadata.entry_points(group=REGISTRAR_GROUP), key=lambda e: (e.value != BUILTINS, e.name))
        if not any(ep.value == BUILTINS for ep in registrars):
            raise OnnxqError("onnxq's built-in passes are not registered; install onnxq with pip (pip install -e .)")
        for ep in registrars:
            ep.load()(registry)
        registry.load_entry_points()
        return registry

    # --- registration ---------------------------------------------------------
    def register(self, pass_cls: type[Pass], *, origin: str | None = None) -> type[Pass]:
        name = getattr(pass_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{pass_cls.__qualname__} has no 'name'")
        if name in self._passes or name in self._presets or name in NESTING_NAMES:
            existing = self._passes.get(name)
            if existing is pass_cls:
                return pass_cls
            raise ValueError(f"pass name '{name}' is already registered")
        self._passes[name] = pass_cls
        if origin:
            self.plugin_origin[name] = origin
        return pass_cls

    def register_preset(self, preset: Preset) -> None:
        if preset.name in self._passes or preset.name in self._presets:
            raise ValueError(f"pass name '{preset.name}' is already registered")
        self._presets[preset.name] = preset

    def load_entry_points(self) -> None:
        """Registers passes from installed packages; a broken plugin is logged and skipped."""
        if os.environ.get("ONNXQ_NO_PLUGINS"):
            return
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            origin = ep.dist.name if ep.dist is not None else ep.value
            try:
                obj = ep.load()
                classes = [obj] if isinstance(obj, type) else list(obj())
                for pass_cls in classes:
                    if not (isinstance(pass_cls, type) and issubclass(pass_cls, Pass)):
                        raise TypeError(f"{pass_cls!r} is not an onnxq Pass subclass")
                    self.register(pass_cls, origin=origin)
            except Exception as e:  # noqa: BLE001  # a broken plugin must not break the tool
                logger.warning("plugin '%s' (%s) not loaded: %s", ep.name, origin, e)

    # --- lookup ----------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted([*self._passes, *self._presets])

    def pass_classes(self) -> dict[str, type[Pass]]:
        return dict(sorted(self._passes.items()))

    def presets(self) -> dict[str, Preset]:
        return dict(sorted(self._presets.items()))

    def __contains__(self, name: str) -> bool:
        return name in self._passes or name in self._presets

    def create(self, name: str, options: dict[str, Any] | None = None) -> Pass:
        """Instantiates a pass or preset by name from raw (text or TOML) options."""
        options = options or {}
        if name in self._passes:
            return self._passes[name].from_text_options(options)
        if name in self._presets:
            preset = self._presets[name]
            defaults = dataclasses.asdict(preset.defaults())
            defaults.update(parse_options(Pipeline, options))
            return Pipeline(preset.build(), label=name, defaults=preset.defaults(), **defaults)
        raise UnknownPassError(self._unknown(name))

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; run 'onnxq passes' to list them"
        return f"unknown pass '{name}'{hint}"

    # --- parsing ---------------------------------------------------------------
    def build(self, specs: Iterable[Spec]) -> list[Pass]:
        passes: list[Pass] = []
        for spec in specs:
            built = self._build_one(spec)
            # NOTE: a plain nested pipeline means the same as its passes inline.
            if isinstance(built, Pipeline) and built.label is None and not built.changed_options():
                passes.extend(built.passes)
            else:
                passes.append(built)
        return passes

    def _build_one(self, spec: Spec) -> Pass:
        if spec.name in NESTING_NAMES:
            if spec.children is None:
                raise OptionError(f"'{spec.name}' needs its passes in parentheses: {spec.name}(a,b)")
            options = dict(spec.options)
            if spec.name == "fixpoint":
                options.setdefault("fixpoint", "true")
            return Pipeline(self.build(spec.children), **parse_options(Pipeline, options))
        if spec.children is not None:
            raise OptionError(f"pass '{spec.name}' does not take nested passes")
        return self.create(spec.name, spec.options)

    def parse(self, text: str) -> Pipeline:
        """Pipeline text (``"a,b{x=1},c"``) -> Pipeline. ``str()`` of the result round-trips."""
        passes = self.build(parse_text(text))
        if len(passes) == 1 and isinstance(passes[0], Pipeline) and passes[0].label is None:
            return passes[0]
        return Pipeline(passes)

    def load(self, source: str | os.PathLike[str]) -> Pipeline:
        """A pipeline from text, or from a ``.toml`` file when ``source`` names one."""
        text = os.fspath(source)
        if text.endswith(".toml"):
            spec = parse_toml(Path(text))
            if spec.children is None:
                raise OptionError(f"{text}: the pipeline file has no 'passes' list")
            return self._build_one(spec)  # type: ignore[return-value]
        return self.parse(text)


def to_toml(pipeline: Pipeline) -> str:
    """TOML text for a pipeline; :meth:`PassRegistry.load` reads it back to an equal pipeline."""
    if pipeline.label is not None:
        pipeline = Pipeline([pipeline])
    table = _pass_table(pipeline)
    table.pop("name")
    table.update(table.pop("options", {}))
    return "# onnxq pipeline\n" + tomli_w.dumps({"pipeline": table})


def _pass_table(pass_: Pass) -> dict[str, Any]:
    options = {k: _toml_value(v) for k, v in pass_.changed_options().items()}
    if isinstance(pass_, Pipeline) and pass_.label is None:
        table: dict[str, Any] = {"name": "pipeline", **options}
        table["passes"] = [_pass_table(p) for p in pass_.passes]
        return table
    table = {"name": pass_.label if isinstance(pass_, Pipeline) else pass_.name}
    if options:
        table["options"] = options
    return table


def _toml_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    return value
