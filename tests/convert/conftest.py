"""Fixtures for conversion tests: the CLI entry point with the convert command registered."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

import onnxq.cli


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str]], int]:
    """``onnxq.cli.main`` with ``convert`` among the commands (other tests may narrow the list)."""
    if "convert" not in onnxq.cli.COMMANDS:
        monkeypatch.setattr(onnxq.cli, "COMMANDS", (*onnxq.cli.COMMANDS, "convert"))
    return onnxq.cli.main
