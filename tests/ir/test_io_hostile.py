"""Hostile inputs and outputs for onnxq.ir.io and ``onnxq run``.

Every rejected input must give one clear line naming the problem (``ModelLoadError``
from the library; exit code 2 and no traceback from the CLI), leave the input
bytes as they were and write nothing at all. Saving must only ever touch the
output file (and its ``.data`` file), atomically, deterministically, and never
leave references to the input's folder behind.

The CLI runs in-process (``onnxq.cli.main``) with logging routed to the captured
stderr as in a real process; two tests run ``python -m onnxq`` for real.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxq import cli
from onnxq.errors import ExternalDataError, ModelLoadError, ModelSaveError
from onnxq.ir.io import load_model, save_model

#: 16x16 float32 = 1 KiB: above onnx_ir's 256-byte threshold, so it really goes external.
SHAPE = (16, 16)
NBYTES = 4 * SHAPE[0] * SHAPE[1]
WEIGHT = np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE) / 7.0
FEEDS = {"X": np.linspace(-2.0, 2.0, SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE)}
EXPECTED = np.maximum(FEEDS["X"] + WEIGHT, 0.0)


# --- library bugs these tests found (strict xfails: they XPASS, and fail, once fixed) ------------
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def known_bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


def cases(kind: str, names: list[str] | None = None) -> list[Any]:
    return [
        pytest.param(name, marks=known_bug(KNOWN_BUGS[kind, name])) if (kind, name) in KNOWN_BUGS else name
        for name in (names if names is not None else sorted(HOSTILE_INPUTS))
    ]


# --- building models -------------------------------------------------------------------


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(SHAPE))


def make_model(
    nodes: list[onnx.NodeProto] | None = None,
    opsets: dict[str, int] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    """Y = Relu(Identity(X + W)) by default: valid, and cleanup has something to remove."""
    if nodes is None:
        nodes = [
            helper.make_node("Add", ["X", "W"], ["T"], name="add"),
            helper.make_node("Identity", ["T"], ["U"], name="identity"),
            helper.make_node("Relu", ["U"], ["Y"], name="relu"),
        ]
    if initializers is None:
        initializers = [numpy_helper.from_array(WEIGHT, "W")]
    opsets = {"": 21} if opsets is None else opsets
    graph = helper.make_graph(nodes, "g", [_value("X")], [_value("Y")], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 10
    return model


def save_plain(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def save_external(folder: Path, name: str = "model.onnx", model: onnx.ModelProto | None = None) -> Path:
    """The default model with its weight in ``<name>.data`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(
        model if model is not None else make_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{name}.data",
        size_threshold=0,
    )
    return path


def edit_external(path: Path, **entries: str) -> None:
    """Rewrites the external_data entries (location, offset, length) of every external tensor."""
    proto = onnx.load(path, load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        info.update(entries)
        del tensor.external_data[:]
        for key, value in info.items():
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(proto, path)


# --- observing the file system -----------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root (symlinks not followed): path -> (kind, content hash / target)."""
    tree: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir", "")
            else:
                tree[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return tree


def changed_paths(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``onnxq.cli.main`` in-process; logging goes to the captured stderr as in a real process."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()  # NOTE: so that main()'s basicConfig installs its stderr handler
    try:
        rc = cli.main([os.fspath(a) if isinstance(a, Path) else str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = int(e.code or 0)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_user_error(rc: int, err: str, *fragments: str) -> str:
    assert rc == 2, f"exit code {rc}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("onnxq: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def ort_outputs(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return sess.run(None, FEEDS)[0]


# --- hostile inputs ------------------------------------------------------------------------

#: name -> builder(root) returning (model path, fragments the message must contain, error class).
Builder = Callable[[Path], tuple[Path, tuple[str, ...], type[ModelLoadError]]]
HOSTILE_INPUTS: dict[str, Builder] = {}


def hostile(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        HOSTILE_INPUTS[name] = builder
        return builder

    return register


@hostile("empty-file")
def _empty(root: Path):
    path = root / "in" / "model.onnx"
    path.write_bytes(b"")
    return path, ("model.onnx", "empty"), ModelLoadError


@hostile("truncated-file")
def _truncated(root: Path):
    data = make_model().SerializeToString()
    path = root / "in" / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path, ("model.onnx", "not a valid ONNX model"), ModelLoadError


@hostile("random-bytes")
def _random(root: Path):
    path = root / "in" / "model.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path, ("model.onnx", "not a valid ONNX model"), ModelLoadError


@hostile("folder-instead-of-file")
def _folder(root: Path):
    path = root / "in" / "model.onnx"
    path.mkdir()
    return path, ("model.onnx", "is a folder"), ModelLoadError


@hostile("missing-file")
def _missing(root: Path):
    return root / "in" / "nowhere.onnx", ("nowhere.onnx", "no such file"), ModelLoadError


@hostile("missing-opset-import")
def _no_opset(root: Path):
    model = make_model()
    del model.opset_import[:]
    return save_plain(model, root / "in" / "model.onnx"), ("opset_import",), ModelLoadError


@hostile("undeclared-domain")
def _undeclared(root: Path):
    node = helper.make_node("Gelu", ["X"], ["Y"], name="gelu", domain="com.microsoft")
    model = make_model([node], initializers=[])
    return (
        save_plain(model, root / "in" / "model.onnx"),
        ("'gelu'", "com.microsoft", "does not import"),
        ModelLoadError,
    )


@hostile("unknown-domain")
def _unknown(root: Path):
    node = helper.make_node("Frobnicate", ["X"], ["Y"], name="frob", domain="com.example.nowhere")
    model = make_model([node], opsets={"": 21, "com.example.nowhere": 1}, initializers=[])
    return (
        save_plain(model, root / "in" / "model.onnx"),
        ("'frob'", "unknown domain 'com.example.nowhere'"),
        ModelLoadError,
    )


@hostile("graph-cycle")
def _cycle(root: Path):
    nodes = [
        helper.make_node("Add", ["X", "U"], ["T"], name="add"),
        helper.make_node("Relu", ["T"], ["U"], name="relu"),
        helper.make_node("Identity", ["U"], ["Y"], name="out"),
    ]
    model = make_model(nodes, initializers=[])
    return save_plain(model, root / "in" / "model.onnx"), ("cycle",), ModelLoadError


@hostile("undefined-input-tensor")
def _undefined(root: Path):
    nodes = [helper.make_node("Add", ["X", "Nope"], ["Y"], name="add")]
    model = make_model(nodes, initializers=[])
    return (
        save_plain(model, root / "in" / "model.onnx"),
        ("'add'", "undefined tensor 'Nope'"),
        ModelLoadError,
    )


def _function_model(body: list[onnx.NodeProto]) -> onnx.ModelProto:
    """Y = F(X) where F is a model-local function with the given body (input a, output r)."""
    function = helper.make_function("local", "F", ["a"], ["r"], body, [helper.make_opsetid("", 21)])
    graph = helper.make_graph(
        [helper.make_node("F", ["X"], ["Y"], name="call", domain="local")], "g", [_value("X")], [_value("Y")]
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
        functions=[function],
    )


@hostile("function-cycle")
def _function_cycle(root: Path):
    body = [
        helper.make_node("Add", ["a", "u"], ["t"], name="add"),
        helper.make_node("Relu", ["t"], ["u"], name="relu"),
        helper.make_node("Identity", ["u"], ["r"], name="out"),
    ]
    return save_plain(_function_model(body), root / "in" / "model.onnx"), ("cycle",), ModelLoadError


@hostile("function-undefined-tensor")
def _function_undefined(root: Path):
    body = [helper.make_node("Add", ["a", "nope"], ["r"], name="add")]
    return (
        save_plain(_function_model(body), root / "in" / "model.onnx"),
        ("'add'", "undefined tensor 'nope'"),
        ModelLoadError,
    )


def _outside(root: Path) -> Path:
    """A copy of the weight's bytes in a folder beside the model's folder."""
    folder = root / "outside"
    folder.mkdir(exist_ok=True)
    path = folder / "weights.data"
    path.write_bytes(WEIGHT.tobytes())
    return path


@hostile("external-absolute-location")
def _absolute(root: Path):
    path = save_external(root / "in")
    (root / "in" / "model.onnx.data").unlink()
    edit_external(path, location=os.fspath(_outside(root).resolve()))
    return path, ("'W'", "is absolute"), ExternalDataError


@hostile("external-dotdot-location")
def _dotdot(root: Path):
    path = save_external(root / "in")
    (root / "in" / "model.onnx.data").unlink()
    _outside(root)
    edit_external(path, location="../outside/weights.data")
    return path, ("'W'", "../outside/weights.data", "leaves the model folder"), ExternalDataError


@hostile("external-symlink-to-outside-file")
def _symlink_file(root: Path):
    path = save_external(root / "in")
    data = root / "in" / "model.onnx.data"
    data.unlink()
    data.symlink_to(_outside(root).resolve())
    return path, ("'W'", "model.onnx.data", "symlink"), ExternalDataError


@hostile("external-symlinked-folder-inside")
def _symlink_dir(root: Path):
    path = save_external(root / "in")
    (root / "in" / "model.onnx.data").unlink()
    (root / "in" / "weights").symlink_to(_outside(root).parent.resolve(), target_is_directory=True)
    edit_external(path, location="weights/weights.data")
    return path, ("'W'", "weights/weights.data", "symlink"), ExternalDataError


@hostile("external-hardlinked-data")
def _hardlink(root: Path):
    path = save_external(root / "in")
    (root / "outside").mkdir()
    os.link(root / "in" / "model.onnx.data", root / "outside" / "linked.data")
    return path, ("'W'", "model.onnx.data", "hardlink"), ExternalDataError


@hostile("external-offset-beyond-file")
def _beyond(root: Path):
    path = save_external(root / "in")
    edit_external(path, offset="512")
    return path, ("'W'", f"offset 512 + length {NBYTES}", "outside"), ExternalDataError


@hostile("external-length-mismatch")
def _length(root: Path):
    path = save_external(root / "in")
    edit_external(path, length=str(NBYTES - 4))
    return path, ("'W'", f"length {NBYTES - 4}", f"({NBYTES} bytes)"), ExternalDataError


@hostile("external-missing-data-file")
def _missing_data(root: Path):
    path = save_external(root / "in")
    (root / "in" / "model.onnx.data").unlink()
    return path, ("'W'", "model.onnx.data", "not found"), ExternalDataError


@hostile("external-location-in-function-subgraph")
def _function_subgraph(root: Path):
    """An If inside a local function, whose branch has an initializer read from outside."""
    _outside(root)
    weight = TensorProto(name="Wt", data_type=TensorProto.FLOAT, dims=list(SHAPE))
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside/weights.data"), ("offset", "0"), ("length", str(NBYTES))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["Wt"], ["o1"], name="leak")], "then", [], [_value("o1")], [weight]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["o2"], name="pass")], "else", [], [_value("o2")]
    )
    function = helper.make_function(
        "local",
        "F",
        ["a", "c"],
        ["r"],
        [helper.make_node("If", ["c"], ["r"], name="if", then_branch=then_branch, else_branch=else_branch)],
        [helper.make_opsetid("", 21)],
    )
    graph = helper.make_graph(
        [helper.make_node("F", ["X", "C"], ["Y"], name="call", domain="local")],
        "g",
        [_value("X"), helper.make_tensor_value_info("C", TensorProto.BOOL, [])],
        [_value("Y")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    return (
        save_plain(model, root / "in" / "model.onnx"),
        ("'Wt'", "../outside/weights.data", "leaves the model folder"),
        ExternalDataError,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.mark.parametrize("case", cases("load"))
def test_load_model_rejects(case: str, root: Path) -> None:
    path, fragments, error = HOSTILE_INPUTS[case](root)
    before = snapshot(root)
    with pytest.raises(error) as info:
        load_model(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot(root) == before


@pytest.mark.parametrize("case", cases("cli"))
def test_cli_run_rejects(case: str, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, fragments, _ = HOSTILE_INPUTS[case](root)
    before = snapshot(root)
    rc, _out, err = run_cli(capsys, "run", path, "-p", "cleanup", "-o", root / "out" / "model.onnx")
    assert_one_line_user_error(rc, err, *fragments)
    assert snapshot(root) == before, "a rejected input must leave every file as it was"


@pytest.mark.parametrize("case", cases("cli", ["random-bytes", "undefined-input-tensor"]))
def test_cli_process_rejects(case: str, root: Path) -> None:
    """The real ``python -m onnxq`` process: exit code 2, one line, no traceback."""
    path, fragments, _ = HOSTILE_INPUTS[case](root)
    before = snapshot(root)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxq",
            "run",
            os.fspath(path),
            "-p",
            "cleanup",
            "-o",
            os.fspath(root / "out" / "model.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ONNXQ_NO_PLUGINS": "1"},
    )
    assert_one_line_user_error(proc.returncode, proc.stderr, *fragments)
    assert proc.stdout == ""
    assert snapshot(root) == before


# --- hostile outputs -----------------------------------------------------------------------


def test_output_same_as_input_refused(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_external(root / "in")
    before = snapshot(root)
    rc, _, err = run_cli(capsys, "run", path, "-p", "cleanup", "-o", path)
    assert_one_line_user_error(rc, err, "refusing to overwrite the input", "--in-place")
    # The same file under another spelling is the same file.
    rc, _, err = run_cli(
        capsys, "run", path, "-p", "cleanup", "-o", root / "out" / ".." / "in" / "model.onnx"
    )
    assert_one_line_user_error(rc, err, "refusing to overwrite the input")
    assert snapshot(root) == before
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input"):
        save_model(load_model(path), path)
    assert snapshot(root) == before


@pytest.mark.parametrize("external", ["no", "yes"])
def test_output_same_as_input_with_in_place(
    external: str, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_external(root / "in")
    before = snapshot(root)
    rc, _, err = run_cli(
        capsys, "run", path, "-p", "cleanup", "-o", path, "--in-place", "--external-data", external
    )
    assert rc == 0, err
    after = snapshot(root)
    changed = changed_paths(before, after)
    assert changed <= {"in/model.onnx", "in/model.onnx.data"} and "in/model.onnx" in changed, changed
    # Embedded now: the data file only the previous model read is removed once the new one is in place.
    assert ("in/model.onnx.data" in after) == (external == "yes")
    model = load_model(path)  # still a valid model, with safe references
    assert all(n.op_type != "Identity" for n in model.graph)
    np.testing.assert_allclose(ort_outputs(path), EXPECTED, rtol=1e-6)


def test_output_into_missing_folder(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_external(root / "in")
    before = snapshot(root)
    target = root / "out" / "nowhere" / "model.onnx"
    rc, _, err = run_cli(capsys, "run", path, "-p", "cleanup", "-o", target)
    assert_one_line_user_error(rc, err, "nowhere", "does not exist")
    assert snapshot(root) == before
    with pytest.raises(ModelSaveError, match="does not exist"):
        save_model(load_model(path), target)
    assert snapshot(root) == before


def test_output_is_a_folder(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_external(root / "in")
    (root / "out" / "model.onnx").mkdir()
    before = snapshot(root)
    rc, _, err = run_cli(capsys, "run", path, "-p", "cleanup", "-o", root / "out" / "model.onnx")
    assert_one_line_user_error(rc, err, "is a folder")
    rc, _, err = run_cli(capsys, "run", path, "-p", "cleanup", "-o", root / "out")
    assert_one_line_user_error(rc, err, "is a folder")
    assert snapshot(root) == before
    with pytest.raises(ModelSaveError, match="is a folder"):
        save_model(load_model(path), root / "out")
    assert snapshot(root) == before


def test_output_data_path_is_a_folder(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_external(root / "in")
    (root / "out" / "model.onnx.data").mkdir()
    before = snapshot(root)
    rc, _, err = run_cli(
        capsys, "run", path, "-p", "cleanup", "-o", root / "out" / "model.onnx", "--external-data", "yes"
    )
    assert_one_line_user_error(rc, err, "model.onnx.data", "is a folder")
    assert snapshot(root) == before


# --- saving: round trips, atomicity, determinism --------------------------------------------


def test_round_trip_with_external_data(root: Path) -> None:
    source = save_external(root / "in")
    before = snapshot(root)
    target = root / "out" / "model.onnx"
    written = save_model(load_model(source), target, external_data=True)
    assert written == root / "out" / "model.onnx.data"
    after = snapshot(root)
    assert changed_paths(before, after) == {"out/model.onnx", "out/model.onnx.data"}
    assert sorted(p.name for p in (root / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (root / "out" / "model.onnx.data").stat().st_size == NBYTES
    proto = onnx.load(target, load_external_data=False)
    (weight,) = proto.graph.initializer
    assert weight.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in weight.external_data}["location"] == "model.onnx.data"
    again = load_model(target)
    np.testing.assert_array_equal(again.graph.initializers["W"].const_value.numpy(), WEIGHT)
    np.testing.assert_allclose(ort_outputs(target), EXPECTED, rtol=1e-6)


def test_existing_data_file_is_replaced_not_appended(root: Path) -> None:
    source = save_external(root / "in")
    target = root / "out" / "model.onnx"
    data = root / "out" / "model.onnx.data"
    data.write_bytes(b"\xff" * (3 * NBYTES))  # stale data from some earlier run
    model = load_model(source)
    save_model(model, target, external_data=True)
    assert data.stat().st_size == NBYTES
    save_model(model, target, external_data=True)
    assert data.stat().st_size == NBYTES
    assert sorted(p.name for p in (root / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    np.testing.assert_allclose(ort_outputs(target), EXPECTED, rtol=1e-6)


def test_embedded_save_from_another_folder_has_no_dangling_refs(root: Path) -> None:
    source = save_external(root / "a")
    target = root / "b" / "model.onnx"
    target.parent.mkdir()
    save_model(load_model(source), target, external_data=False)
    shutil.rmtree(root / "a")
    assert [p.name for p in (root / "b").iterdir()] == ["model.onnx"]
    proto = onnx.load(target, load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    np.testing.assert_allclose(ort_outputs(target), EXPECTED, rtol=1e-6)


def _external_constant_model(folder: Path) -> Path:
    """Y = X + C where C is a Constant node whose tensor attribute lives in external data."""
    nodes = [
        helper.make_node("Constant", [], ["C"], name="const", value=numpy_helper.from_array(WEIGHT, "C")),
        helper.make_node("Add", ["X", "C"], ["T"], name="add"),
        helper.make_node("Relu", ["T"], ["Y"], name="relu"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        make_model(nodes, initializers=[]),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
        convert_attribute=True,
    )
    return path


@pytest.mark.parametrize("external", [False, True])
def test_save_from_another_folder_with_external_attribute_tensor(external: bool, root: Path) -> None:
    """A Constant's tensor stored externally must not keep pointing at the input's data file."""
    source = _external_constant_model(root / "a")
    target = root / "b" / "model.onnx"
    target.parent.mkdir()
    save_model(load_model(source), target, external_data=external)
    shutil.rmtree(root / "a")
    np.testing.assert_allclose(ort_outputs(target), EXPECTED, rtol=1e-6)


def test_in_place_with_external_attribute_tensor_keeps_the_data(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _external_constant_model(root / "in")
    rc, _, err = run_cli(
        capsys, "run", path, "-p", "remove-identity", "-o", path, "--in-place", "--external-data", "yes"
    )
    assert rc == 0, err
    np.testing.assert_allclose(ort_outputs(path), EXPECTED, rtol=1e-6)


@pytest.mark.parametrize("variant", ["output-is-input-data", "output-data-is-input-data"])
def test_output_must_not_replace_the_inputs_data(
    variant: str, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o names the input's data file, or '<output>.data' is the input's data file."""
    folder = root / "in"
    source = folder / "model.onnx"
    location = "model.onnx.data" if variant == "output-is-input-data" else "out.onnx.data"
    model = make_model(
        initializers=[
            numpy_helper.from_array(np.full(SHAPE, 7.0, np.float32), "Unused"),
            numpy_helper.from_array(WEIGHT, "W"),
        ]
    )
    onnx.save(
        model,
        source,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    before = snapshot(folder)
    if variant == "output-is-input-data":
        argv = ["-o", folder / location]
    else:
        argv = ["-o", folder / "out.onnx", "--external-data", "yes"]
    rc, _, err = run_cli(capsys, "run", source, "-p", "cleanup", *argv)
    # Either refused (one line, exit 2) or done without touching the input's data file.
    if rc != 0:
        assert_one_line_user_error(rc, err, location)
    assert snapshot(folder)[location] == before[location], "the input's external data file was replaced"
    assert snapshot(folder)["model.onnx"] == before["model.onnx"]
    np.testing.assert_allclose(ort_outputs(source), EXPECTED, rtol=1e-6)


def _fail_after_writing(real: Callable[..., None]) -> Callable[..., None]:
    def save(model: ir.Model, path: Any, *args: Any, **kwargs: Any) -> None:
        real(model, path, *args, **kwargs)
        Path(path).write_bytes(b"half-written garbage")  # a crash in the middle of the write
        raise OSError(28, "No space left on device")

    return save


@pytest.mark.parametrize("external", [False, True])
def test_failed_save_keeps_previous_output(
    external: bool, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save_external(root / "in")
    target = root / "out" / "model.onnx"
    model = load_model(source)
    save_model(model, target, external_data=external)
    before = snapshot(root)
    monkeypatch.setattr(ir, "save", _fail_after_writing(ir.save))
    with pytest.raises((OSError, ModelSaveError)):
        save_model(model, target, external_data=external)
    monkeypatch.undo()
    assert snapshot(root) == before, "the previous output changed, or temporary files remain"
    np.testing.assert_allclose(ort_outputs(target), EXPECTED, rtol=1e-6)


def test_failed_rename_keeps_previous_external_output(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between moving the data file and the model into place must not mix old and new."""
    source = save_external(root / "in")
    target = root / "out" / "model.onnx"
    save_model(load_model(source), target, external_data=True)
    before = snapshot(root)
    # The next save writes other weights, so old model + new data would compute garbage.
    model = load_model(source)
    model.graph.initializers["W"].const_value = ir.Tensor(WEIGHT * 2, name="W")
    real_replace = os.replace
    calls: list[str] = []

    def replace(src: Any, dst: Any) -> None:
        calls.append(os.fspath(dst))
        if os.fspath(dst) == os.fspath(target):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises((OSError, ModelSaveError)):
        save_model(model, target, external_data=True)
    monkeypatch.undo()
    assert calls, "save_model did not rename anything into place"
    assert snapshot(root) == before, "old model + new data: the previous output is corrupted"


def test_cleanup_output_is_deterministic(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_external(root / "in")
    outputs = []
    for run in ("a", "b"):
        for external in ("no", "yes"):
            folder = root / "out" / run / external
            folder.mkdir(parents=True)
            rc, _, err = run_cli(
                capsys,
                "run",
                source,
                "-p",
                "cleanup",
                "-o",
                folder / "model.onnx",
                "--external-data",
                external,
            )
            assert rc == 0, err
            outputs.append(snapshot(folder))
    assert outputs[0] == outputs[2], "embedded outputs of two identical runs differ"
    assert outputs[1] == outputs[3], "external-data outputs of two identical runs differ"
    assert "model.onnx.data" in outputs[1]


def test_cli_success_writes_only_the_output(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_external(root / "in")
    before = snapshot(root)
    rc, out, err = run_cli(capsys, "run", source, "-p", "cleanup", "-o", root / "out" / "model.onnx")
    assert rc == 0, err
    assert "Traceback" not in err
    assert changed_paths(before, snapshot(root)) == {"out/model.onnx"}
    assert "changed" in out
    np.testing.assert_allclose(ort_outputs(root / "out" / "model.onnx"), EXPECTED, rtol=1e-6)


def test_external_tensors_inside_a_tensors_attribute_are_read_in(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A TENSORS attribute (a list of tensors, custom ops use them) with external data: the load must
    # point it at the model's folder and a single-file save must read it in, like TENSOR attributes.
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = helper.make_node("Lookup", ["x"], ["y"], domain="ai.onnx.contrib",
                            tables=[numpy_helper.from_array(table, "t0"), numpy_helper.from_array(table * 2, "t1")])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.contrib", 1)])
    (tmp_path / "src").mkdir()
    onnx.save(proto, tmp_path / "src" / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0,
              convert_attribute=True)
    written = onnx.load(tmp_path / "src" / "m.onnx", load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in written.graph.node[0].attribute[0].tensors)
    # The benchmark's size on disk counts the data file these tensors live in (one walk for all).
    from onnxq.validation.bench import model_size

    src = tmp_path / "src"
    assert model_size(src / "m.onnx") == (src / "m.onnx").stat().st_size + (src / "m.data").stat().st_size
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = load_model("../src/m.onnx")
    save_model(model, tmp_path / "out.onnx", external_data=False)
    saved = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    tables = saved.graph.node[0].attribute[0].tensors
    assert [t.data_location for t in tables] == [TensorProto.DEFAULT, TensorProto.DEFAULT]
    np.testing.assert_array_equal(numpy_helper.to_array(tables[1]), table * 2)
