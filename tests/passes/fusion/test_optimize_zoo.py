"""The optimize preset on every zoo model: checker passes, outputs equal, metric unchanged, idempotent.

Outputs must match the original within 1e-4 of the output's scale (its largest magnitude) on
the held-out split, and the zoo metric must not move by more than 0.001.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # NOTE: models/ is a folder of scripts, not installed

from models import zoo  # noqa: E402
from onnxq.framework.context import PassContext  # noqa: E402
from onnxq.framework.pipeline import apply  # noqa: E402
from onnxq.ir.io import load_model, save_model  # noqa: E402
from onnxq.passes.fusion import optimize_pipeline  # noqa: E402

pytestmark = pytest.mark.slow

ZOO = (
    "bert_like", "crnn_ocr", "digits_cnn", "dynamic_transformer", "keras_cnn_savedmodel", "keras_cnn_tflite",
    "lstm_gru", "mobilenetv2_digits", "resnet_digits", "transformer_digits",
    # old-opset variants (legacy torch exporter, tf2onnx at 11)
    "keras_cnn_op11", "lstm_gru_op12", "mobilenetv2_digits_op13", "resnet_digits_op11",
)
#: Fused ops each model must end with (what the preset is for on these graphs).
EXPECTED_OPS = {
    "bert_like": {"Gelu": 6},
    "transformer_digits": {"Gelu": 2},
    "dynamic_transformer": {"Gelu": 2},
    "keras_cnn_savedmodel": {"Gemm": 2, "Shape": 0},
    "resnet_digits": {"BatchNormalization": 0, "Shape": 0},
    "crnn_ocr": {"Shape": 1},
    "lstm_gru_op12": {"Constant": 0},
}


@pytest.mark.parametrize("name", ZOO)
def test_optimize_keeps_outputs_and_metric(name: str, tmp_path: Path) -> None:
    zoo.ensure_built([name])
    model = load_model(zoo.model_path(name))
    apply(model, optimize_pipeline(), PassContext())
    out = tmp_path / f"{name}.opt.onnx"
    save_model(model, out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    inputs, _ = zoo.load_eval(name)
    inputs = {k: v[:128] for k, v in inputs.items()}
    before = zoo.run_onnx(zoo.model_path(name), inputs)
    after = zoo.run_onnx(out, inputs)
    for want, got in zip(before, after, strict=True):
        scale = max(float(np.max(np.abs(want))), 1e-6)
        assert float(np.max(np.abs(want.astype(np.float64) - got))) <= 1e-4 * scale, name
    assert abs(zoo.evaluate(name, out) - zoo.evaluate(name)) <= 1e-3
    ops: dict[str, int] = {}
    for node in load_model(out).graph.all_nodes():
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    for op, count in EXPECTED_OPS.get(name, {}).items():
        assert ops.get(op, 0) == count, (name, op, ops)
    again = apply(model, optimize_pipeline(), PassContext())
    assert not again.modified, again.stats
