"""Writes the quick-start example bundled in the package: ``onnxq/examples/digits_cnn.onnx``.

The model is the zoo's ``digits_cnn`` (trained on scikit-learn's digits, opset 18, dynamic
batch, ~30 KB); ``digits_samples.npz`` holds 32 held-out images under the model's input
name ``input`` plus their ``labels``. Deterministic: rerunning on the same machine and
library versions rewrites identical bytes. Run: ``python models/make_example.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # NOTE: run as a script; make ``models`` importable as a package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from models import _common, digits_cnn  # noqa: E402
from onnxq.ir.io import save_model  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "onnxq" / "examples"
SAMPLES = 32


def make_example(out_dir: Path = EXAMPLES_DIR) -> tuple[Path, Path]:
    """Trains and exports the example; returns (model path, samples path)."""
    split = _common.digits_split()
    net = digits_cnn.train_net()
    exported = digits_cnn.export(net)
    exported.model.doc_string = (
        "onnxq quick-start example: tiny CNN trained on scikit-learn's 8x8 digits. "
        "Input 'input' float32 [batch, 1, 8, 8] in [0, 1]; output 'logits' [batch, 10]."
    )
    model_path = out_dir / "digits_cnn.onnx"
    samples_path = out_dir / "digits_samples.npz"
    save_model(exported.model, model_path)
    _common.save_npz(
        samples_path,
        {"input": digits_cnn.images(split.x_test[:SAMPLES]), "labels": split.y_test[:SAMPLES]},
    )
    return model_path, samples_path


def main() -> None:
    model_path, samples_path = make_example()
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    split = _common.digits_split()
    logits = session.run(None, {"input": digits_cnn.images(split.x_test)})[0]
    held_out = float(np.mean(logits.argmax(-1) == split.y_test))
    with np.load(samples_path) as samples:
        sample_logits = session.run(None, {"input": samples["input"]})[0]
        sample_acc = float(np.mean(sample_logits.argmax(-1) == samples["labels"]))
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes) and {samples_path}")
    print(
        f"accuracy: held-out {held_out:.4f} (n={len(split.y_test)}), samples {sample_acc:.4f} (n={SAMPLES})"
    )


if __name__ == "__main__":
    main()
