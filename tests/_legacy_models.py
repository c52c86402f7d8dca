"""Old-opset exports of small real networks, as third-party tools write them.

Built on the fly (no downloads): PyTorch's legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) at opsets 10 to 13, and tf2onnx's
``from_function`` at opsets 11 and 13. The exports keep what real old exports
hold and the cleanup passes must handle at those opsets: BatchNormalization next
to Conv, ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` arithmetic, an
LSTM whose initial state is built from the static input shape (onnxscript's
folder turns that ``Shape`` into a ``Constant{value_ints}``, invalid below
opset 12), and unfolded constants (``do_constant_folding=False``).

Each model comes with one input feed and the framework's own outputs on it, so a
check compares against PyTorch / TensorFlow, not against onnxruntime itself.
Used by ``tests/passes/test_cleanup_legacy_opsets.py`` and ``tools/conformance.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

TORCH_OPSETS = (10, 11, 12, 13)
TF_OPSETS = (11, 13)


@dataclasses.dataclass(frozen=True)
class LegacyModel:
    """One exported model, one input feed and the source framework's outputs on it."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    expected: list[np.ndarray]
    rtol: float = 1e-4
    atol: float = 1e-5

    @property
    def opset(self) -> int:
        return next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))


def _torch_models() -> list[tuple[str, Callable[[], object], tuple[int, ...], dict | None]]:
    import torch
    from torch import nn

    class Cnn(nn.Module):
        """conv/bn/relu, pooling, a reshape computed from the runtime shape, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn(self.conv(x)))
            y = nn.functional.avg_pool2d(y, 2)
            n, c, h, w = y.shape
            return self.fc(y.reshape(n, c * h * w))

    class Lstm(nn.Module):
        """An LSTM whose zero initial state the exporter builds from the input's shape."""

        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(6, 12, batch_first=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    def seeded(cls: type[nn.Module]) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            torch.manual_seed(0)
            module = cls().eval()
            # NOTE: non-trivial running statistics, so BatchNormalization is not an identity.
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
            return module

        return make

    return [
        ("torch_cnn", seeded(Cnn), (2, 3, 8, 8), {"x": {0: "batch"}}),
        # NOTE: static shapes on purpose: the LSTM's Shape then folds to a constant.
        ("torch_lstm", seeded(Lstm), (2, 5, 6), None),
    ]


def build_torch_models(opsets: tuple[int, ...] = TORCH_OPSETS) -> list[LegacyModel]:
    """Legacy TorchScript exports (``dynamo=False``) of a CNN and an LSTM at each opset."""
    import torch

    models = []
    for name, make, shape, dynamic in _torch_models():
        module = make()
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        with torch.no_grad():
            expected = [module(x).numpy()]
        for opset in opsets:
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation warning
                torch.onnx.export(
                    module,
                    (x,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    do_constant_folding=False,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_axes=dynamic,
                )
            proto = onnx.load_from_string(buffer.getvalue())
            models.append(LegacyModel(f"{name}_opset{opset}", proto, {"x": x.numpy()}, expected))
    return models


def build_tf_models(opsets: tuple[int, ...] = TF_OPSETS) -> list[LegacyModel]:
    """tf2onnx ``from_function`` exports of a small CNN (conv, bias, relu, dynamic reshape, dense)."""
    import tensorflow as tf
    import tf2onnx

    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.3
    bias = rng.standard_normal(4).astype(np.float32)
    dense = rng.standard_normal((4 * 4 * 4, 5)).astype(np.float32) * 0.1
    scale = rng.uniform(0.5, 1.5, 4).astype(np.float32)

    def forward(x: tf.Tensor) -> tf.Tensor:
        # NOTE: constants made inside the function; captured tensors would become graph inputs.
        y = tf.nn.conv2d(x, tf.constant(kernel), strides=1, padding="SAME")
        y = tf.nn.relu(y * tf.constant(scale) + tf.constant(bias))
        y = tf.nn.max_pool2d(y, 2, 2, "VALID")
        shape = tf.shape(y)
        y = tf.reshape(y, tf.stack([shape[0], shape[1] * shape[2] * shape[3]]))
        return tf.matmul(y, tf.constant(dense))

    spec = tf.TensorSpec((None, 8, 8, 3), tf.float32, name="x")
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    expected = [forward(tf.constant(x)).numpy()]
    models = []
    for opset in opsets:
        function = tf.function(forward)
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
        feed_name = proto.graph.input[0].name
        models.append(LegacyModel(f"tf_cnn_opset{opset}", proto, {feed_name: x}, expected))
    return models


@functools.cache
def build_all() -> tuple[LegacyModel, ...]:
    """Every legacy model: PyTorch at opsets 10-13, tf2onnx at 11 and 13.

    Built once per process (tests and the conformance tool share it); callers must
    not modify the protos (deserialize a copy).
    """
    return tuple(build_torch_models() + build_tf_models())


def save_all(directory: Path) -> dict[str, LegacyModel]:
    """Builds every model and writes ``<name>.onnx`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    models = {}
    for m in build_all():
        onnx.save(m.model, directory / f"{m.name}.onnx")
        models[m.name] = m
    return models
