"""The quick-start example bundled in the package (onnxq/examples, written by models/make_example.py)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

import onnxq
from onnxq.examples import EXAMPLE_INPUT_NAME, example_inputs_path, example_model_path


def test_example_files_are_small_and_present() -> None:
    assert example_model_path().is_file()
    assert example_inputs_path().is_file()
    assert example_model_path().stat().st_size < 200_000
    assert example_inputs_path().stat().st_size < 50_000


def test_example_model_is_opset_18_with_a_dynamic_batch() -> None:
    model = onnxq.load_model(example_model_path())
    assert model.opset_imports[""] == 18
    (value,) = model.graph.inputs
    assert value.name == EXAMPLE_INPUT_NAME
    assert value.shape is not None
    assert str(value.shape[0]) == "batch"
    assert list(value.shape)[1:] == [1, 8, 8]


def test_example_model_classifies_its_samples() -> None:
    session = ort.InferenceSession(example_model_path(), providers=["CPUExecutionProvider"])
    with np.load(example_inputs_path()) as samples:
        images, labels = samples[EXAMPLE_INPUT_NAME], samples["labels"]
    assert images.shape == (32, 1, 8, 8) and images.dtype == np.float32
    (logits,) = session.run(None, {EXAMPLE_INPUT_NAME: images})
    assert float(np.mean(logits.argmax(-1) == labels)) > 0.9
    (single,) = session.run(None, {EXAMPLE_INPUT_NAME: images[:1]})
    np.testing.assert_allclose(single, logits[:1], rtol=1e-5, atol=1e-5)
