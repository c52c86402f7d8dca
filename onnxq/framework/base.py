"""The pass API: Pass, its typed Options, PassResult and Diagnostic.

A pass rewrites an ``onnx_ir.Model`` in place and returns what it did. It keeps
no state on ``self`` between runs; its knobs live in a frozen ``Options``
dataclass that parses from and prints back to pipeline text (``name{a=1,b=x}``).
``Pass`` also implements onnx_ir's ``InPlacePass`` protocol, so an onnxq pass
runs inside an ``onnx_ir.passes.PassManager`` too.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import onnx_ir as ir

from onnxq.errors import OptionError

if TYPE_CHECKING:
    from onnxq.framework.context import Analysis, PassContext, Resource


class Severity(enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """Something a pass wants the user to know, tied to a node or value when possible."""

    message: str
    severity: Severity = Severity.INFO
    node: str | None = None

    def __str__(self) -> str:
        where = f"{self.node}: " if self.node else ""
        return f"{self.severity.value}: {where}{self.message}"


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass did. ``modified=False`` promises the model was not touched."""

    modified: bool
    stats: Mapping[str, int] = dataclasses.field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()


class Pass(ir.passes.InPlacePass, abc.ABC):
    """Base class of every onnxq pass.

    Subclasses set ``name`` (kebab-case, same as the module name), ``summary``,
    optionally a nested frozen dataclass ``Options``, and implement :meth:`run`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    #: Analyses the pass reads (computed and cached by the context). NOTE: not `requires`,
    #: which onnx_ir's PassBase uses for its pre-condition hook.
    analyses: ClassVar[tuple[type[Analysis[Any]], ...]] = ()
    needs: ClassVar[tuple[type[Resource], ...]] = ()

    @dataclasses.dataclass(frozen=True)
    class Options:
        """A pass without options."""

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__()
        if options is not None and kwargs:
            raise TypeError("give either an Options object or keyword options, not both")
        if options is None:
            try:
                options = self.Options(**kwargs)
            except TypeError as e:
                raise OptionError(f"pass '{self.name}': {e}") from None
        elif not isinstance(options, self.Options):
            raise TypeError(f"pass '{self.name}' expects {self.Options.__qualname__}")
        self.options = options

    @abc.abstractmethod
    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        """Rewrites ``model`` in place and reports what changed."""

    # --- onnx_ir interop -------------------------------------------------
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxq.framework.context import PassContext

        result = self.run(model, PassContext())
        return ir.passes.PassResult(model, modified=result.modified)

    # --- text form -------------------------------------------------------
    @classmethod
    def from_text_options(cls, raw: Mapping[str, str]) -> Pass:
        """Builds the pass from ``{key: text}`` options as written in pipeline text."""
        return cls(**parse_options(cls, raw))

    def options_text(self) -> str:
        """The options that differ from their defaults, as ``a=1,b=x``."""
        return ",".join(f"{k}={format_option(v)}" for k, v in self.changed_options().items())

    def changed_options(self) -> dict[str, Any]:
        defaults = self.Options()
        return {
            f.name: getattr(self.options, f.name)
            for f in dataclasses.fields(self.options)
            if getattr(self.options, f.name) != getattr(defaults, f.name)
        }

    def __str__(self) -> str:
        text = self.options_text()
        return f"{self.name}{{{text}}}" if text else self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options == self.options  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.options))


def option_fields(pass_cls: type[Pass]) -> list[tuple[str, type, Any, str]]:
    """(name, type, default, help) for each option of a pass class."""
    hints = typing.get_type_hints(pass_cls.Options)
    rows = []
    for f in dataclasses.fields(pass_cls.Options):
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((f.name, hints[f.name], default, str(f.metadata.get("help", ""))))
    return rows


def parse_options(pass_cls: type[Pass], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Converts text (or TOML) option values to the types the Options dataclass declares."""
    fields = {name: (typ, default) for name, typ, default, _ in option_fields(pass_cls)}
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise OptionError(f"pass '{pass_cls.name}' has no option '{key}' (options: {known})")
        parsed[norm] = _coerce(pass_cls.name, norm, fields[norm][0], value)
    return parsed


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return ":".join(format_option(v) for v in value)
    text = str(value)
    if not text or text != text.strip() or any(c in text for c in ',{}()"\\'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return text


def _coerce(pass_name: str, key: str, typ: Any, value: Any) -> Any:
    where = f"pass '{pass_name}' option '{key}'"
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        typ = args[0]
        origin = typing.get_origin(typ)
    if origin is tuple:
        (item,) = typing.get_args(typ)[:1]
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(":") if v]
        return tuple(_coerce(pass_name, key, item, v) for v in items)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            low = str(value).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ is float:
            return float(value)
        if typ is str:
            return str(value)
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            return typ(value)
    except (ValueError, TypeError):
        raise OptionError(f"{where}: '{value}' is not a valid {getattr(typ, '__name__', typ)}") from None
    raise OptionError(f"{where}: unsupported option type {typ}")
