"""onnxq.ir.interop: the one door to onnx's C++ APIs keeps large weights out of the proto."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser

from onnxq.ir.interop import call_onnx
from onnxq.ir.io import load_model


def test_call_onnx_leaves_large_external_weights_on_disk(tmp_path: Path, monkeypatch) -> None:
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 1024] x) => (float[N, 1024] y) { y = MatMul(x, w) }""")
    weight = np.random.default_rng(0).normal(0, 1, (1024, 1024)).astype(np.float32)  # 4 MiB
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    onnx.save(proto, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = load_model("../m.onnx")

    def infer(p: onnx.ModelProto) -> tuple[int, onnx.ModelProto]:
        return p.ByteSize(), onnx.shape_inference.infer_shapes(p, strict_mode=True)

    size, inferred = call_onnx(infer, model)
    assert size < 64 * 1024  # the 4 MiB weight did not enter the proto
    (y,) = inferred.graph.output
    assert [d.dim_param or d.dim_value for d in y.type.tensor_type.shape.dim] == ["N", 1024]
    assert np.array_equal(model.graph.initializers["w"].const_value.numpy(), weight)  # model intact, still lazy
