"""Replacing a model saved with external data: the model and its data change as one pair.

``save_model`` puts new data in under a name the previous model does not read
(``<name>.data``, or ``<name>.<content hash>.data`` when the previous model reads
``<name>.data`` and it holds other bytes), then renames the model into place, and
only then removes the data files the previous model used. At every moment the file
at the output path is a model whose data matches it, which a real crash (no
exception handler runs) would leave behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.ir.io import load_model, save_model
from tests.ir.test_io_hostile import EXPECTED, FEEDS, WEIGHT, make_model, save_external, snapshot

HASHED = re.compile(r"model\.onnx\.[0-9a-f]{16}\.data")


def _outputs(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return sess.run(None, FEEDS)[0]


def _with_weight(source: Path, scale: float) -> ir.Model:
    model = load_model(source)
    model.graph.initializers["W"].const_value = ir.Tensor(WEIGHT * scale, name="W")
    return model


def _expected(scale: float) -> np.ndarray:
    return np.maximum(FEEDS["X"] + WEIGHT * scale, 0.0)


def _locations(path: Path) -> set[str]:
    proto = onnx.load(path, load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


def test_replacing_with_other_weights_switches_data_names_and_cleans_up(tmp_path: Path) -> None:
    source = save_external(tmp_path / "in")
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    names = []
    for scale in (1.0, 2.0, 3.0):
        written = save_model(_with_weight(source, scale), target, external_data=True)
        files = sorted(p.name for p in target.parent.iterdir())
        assert files == sorted(["model.onnx", written.name]), files  # one model, one data file
        assert _locations(target) == {written.name}
        np.testing.assert_allclose(_outputs(target), _expected(scale), rtol=1e-6)
        names.append(written.name)
    # A fresh output keeps the plain name; a replacement with other bytes alternates.
    assert names[0] == "model.onnx.data" and HASHED.fullmatch(names[1]) and names[2] == "model.onnx.data"


def test_resaving_the_same_weights_leaves_the_data_file_alone(tmp_path: Path) -> None:
    source = save_external(tmp_path / "in")
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    save_model(load_model(source), target, external_data=True)
    data = target.parent / "model.onnx.data"
    inode = data.stat().st_ino
    assert save_model(load_model(source), target, external_data=True) == data
    assert data.stat().st_ino == inode
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_hashed_name_is_deterministic(tmp_path: Path) -> None:
    source = save_external(tmp_path / "in")
    written = []
    for run in ("a", "b"):
        target = tmp_path / run / "model.onnx"
        target.parent.mkdir()
        save_model(load_model(source), target, external_data=True)
        written.append(save_model(_with_weight(source, 2.0), target, external_data=True))
    assert written[0].name == written[1].name and HASHED.fullmatch(written[0].name)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


@pytest.mark.parametrize("first_scale", [1.0, 2.0], ids=["plain-to-hashed", "hashed-to-plain"])
def test_at_the_model_rename_the_previous_pair_is_intact(
    first_scale: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crash just before the model rename leaves: the previous model, computing as before."""
    source = save_external(tmp_path / "in")
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    save_model(_with_weight(source, 1.0), target, external_data=True)
    if first_scale != 1.0:
        save_model(_with_weight(source, first_scale), target, external_data=True)
    previous = _expected(first_scale)
    real_replace = os.replace
    seen: list[np.ndarray] = []

    def replace(src: Any, dst: Any) -> None:
        if os.fspath(dst) == os.fspath(target):
            seen.append(_outputs(target))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_model(_with_weight(source, 5.0), target, external_data=True)
    monkeypatch.undo()
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], previous, rtol=1e-6)
    np.testing.assert_allclose(_outputs(target), _expected(5.0), rtol=1e-6)


def test_data_files_not_named_by_save_model_are_never_removed(tmp_path: Path) -> None:
    # A third-party model at the output path reads 'weights.bin', which other models may share.
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "model.onnx"
    onnx.save(make_model(), target, save_as_external_data=True, location="weights.bin", size_threshold=0)
    source = save_external(tmp_path / "in")
    save_model(load_model(source), target, external_data=True)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data", "weights.bin"]
    np.testing.assert_allclose(_outputs(target), EXPECTED, rtol=1e-6)


def test_embedded_resave_removes_the_previous_data_file(tmp_path: Path) -> None:
    source = save_external(tmp_path / "in")
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    save_model(load_model(source), target, external_data=True)
    assert save_model(load_model(source), target, external_data=False) == target
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    np.testing.assert_allclose(_outputs(target), EXPECTED, rtol=1e-6)
