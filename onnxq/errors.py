"""The onnxq error hierarchy.

Every error the library raises on purpose derives from :class:`OnnxqError`.
:class:`UserError` marks problems with the user's input (a bad file, option or
pass name): the CLI prints its one-line message and exits with code 2. Anything
else is an internal failure or a failed check (exit code 1).
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, without terminal colours."""
    for line in _ANSI.sub("", str(e)).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


class OnnxqError(Exception):
    """Base class of every error raised by onnxq on purpose."""

    exit_code: int = 1


class UserError(OnnxqError):
    """A problem with the user's input; the message says what, where and what to do."""

    exit_code = 2


class ModelLoadError(UserError):
    """The model file cannot be read, or is not a valid ONNX model."""


class ExternalDataError(ModelLoadError):
    """An external-data reference is unsafe or does not match its file."""


class ModelSaveError(UserError):
    """The model cannot be written where it was asked to go."""


class OptionError(UserError):
    """A pass option, pipeline text or pipeline file is malformed."""


class UnknownPassError(OptionError):
    """A pipeline names a pass the registry does not know."""


class MissingExtraError(UserError):
    """An optional dependency (pip extra) is not installed."""


class ConversionError(UserError):
    """A framework model could not be converted to a valid ONNX model."""


class PassFailedError(OnnxqError):
    """A pass raised, or broke a contract (e.g. claimed no change but changed the model)."""

    def __init__(self, pass_name: str, message: str) -> None:
        super().__init__(f"pass '{pass_name}': {message}")
        self.pass_name = pass_name


class VerificationError(PassFailedError):
    """The model failed verification (checker / shape inference) after a pass."""


class NumericMismatchError(PassFailedError):
    """A pass changed the model's outputs beyond the tolerance."""
