"""A tiny classifier whose second branch carries its signal beside a huge outlier channel.

``branch`` (MatMul h @ wb) reads ``h``: channel 0 is 1000x the others, so one per-tensor uint8
scale on ``h`` rounds the informative channels to zero and the class decision collapses. The
main branch (``main1``, ``main2``) quantizes well. Leaving only ``branch`` in float restores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
fragile (float[N, 16] x) => (float[N, 10] y) {
  a = MatMul(x, w1)
  ar = Relu(a)
  m = MatMul(ar, w2)
  h = MatMul(x, wa)
  f = MatMul(h, wb)
  y = Add(m, f)
}
"""
NAMES = {"a": "main1", "m": "main2", "h": "spread", "f": "branch", "y": "sum", "ar": "relu"}


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    wa = rng.normal(0, 0.05, (16, 16)).astype(np.float32)
    wa[:, 0] = 0.0
    wa[0, 0] = 1000.0  # the outlier channel
    wb = rng.normal(0, 20.0, (16, 10)).astype(np.float32)
    wb[0, :] = 1e-5
    return {
        "w1": rng.normal(0, 0.3, (16, 16)).astype(np.float32),
        "w2": rng.normal(0, 0.05, (16, 10)).astype(np.float32),
        "wa": wa,
        "wb": wb,
    }


def model_proto(seed: int = 0) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(TEXT)
    for node in proto.graph.node:
        node.name = NAMES[node.output[0]]
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in weights(seed).items())
    onnx.checker.check_model(proto, full_check=True)
    return proto


def model(seed: int = 0) -> ir.Model:
    return ir.from_proto(model_proto(seed))


def samples(count: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Stacked feeds: ``x`` of shape [count, 1, 16] (one [1, 16] feed per sample)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(0, 1, (count, 1, 16)).astype(np.float32)}


def write(folder: Path, calib: int = 96) -> tuple[Path, Path]:
    """The model and a calibration .npz in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fragile.onnx"
    onnx.save(model_proto(), path)
    data = folder / "calib.npz"
    x = samples(calib)["x"][:, 0]  # NOTE: stacked .npz: leading sample axis, each sample is [1, 16]
    np.savez(data, x=x[:, None, :])
    return path, data


def top1_vs_argmax_of_feature0(outputs: list[np.ndarray], labels: np.ndarray | None) -> float:
    """A user metric for the CLI tests (``--metric path/_fragile.py:top1``): labels accuracy."""
    assert labels is not None
    return float(np.mean(outputs[0].reshape(len(labels), -1).argmax(-1) == labels))
