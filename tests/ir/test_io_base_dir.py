"""External data is read from the folder the checks validated: the real model folder, in functions too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

from onnxq import runtime
from onnxq.ir.io import load_model, save_model

WEIGHT = np.arange(4, dtype=np.float32)


def _external_model(folder: Path, name: str) -> Path:
    w = onh.from_array(WEIGHT, "w")
    graph = oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])], [w])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    path = folder / name
    onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def test_symlinked_model_reads_data_beside_the_real_file(tmp_path: Path) -> None:
    real_dir, link_dir = tmp_path / "sb", tmp_path / "sa"
    real_dir.mkdir()
    link_dir.mkdir()
    real = _external_model(real_dir, "real.onnx")
    (link_dir / "w.bin").write_bytes(np.full(4, 666, np.float32).tobytes())  # a decoy beside the link
    os.symlink(real, link_dir / "model.onnx")
    out = tmp_path / "out.onnx"
    save_model(load_model(link_dir / "model.onnx"), out)
    got = runtime.run(out, {"x": np.zeros(4, np.float32)})["y"]
    np.testing.assert_array_equal(got, WEIGHT)


def test_external_constant_in_a_function_is_read_from_the_model_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    const = oh.make_node("Constant", [], ["c"], value=onh.from_array(WEIGHT, "c"))
    fn = oh.make_function("local", "F", ["a"], ["b"], [const, oh.make_node("Add", ["a", "c"], ["b"])],
                          [oh.make_opsetid("", 18)])
    graph = oh.make_graph([oh.make_node("F", ["x"], ["y"], domain="local")], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])])
    model = oh.make_model(graph, functions=[fn], opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("local", 1)])
    onnx.external_data_helper.convert_model_to_external_data(
        model, location="w.bin", size_threshold=0, convert_attribute=True
    )
    onnx.save(model, folder / "fm.onnx")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "w.bin").write_bytes(np.full(4, 100, np.float32).tobytes())
    monkeypatch.chdir(decoy)
    out = tmp_path / "out.onnx"
    save_model(load_model(folder / "fm.onnx"), out)
    got = runtime.run(out, {"x": np.zeros(4, np.float32)})["y"]
    np.testing.assert_array_equal(got, WEIGHT)
