"""Fixtures for conversion tests: the CLI entry point, which must register the convert command."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

import onnxq.cli


@pytest.fixture
def cli() -> Callable[[Sequence[str]], int]:
    """``onnxq.cli.main``; the conversion tests fail if ``convert`` is not among its commands."""
    assert "convert" in onnxq.cli.COMMANDS, onnxq.cli.COMMANDS
    return onnxq.cli.main
