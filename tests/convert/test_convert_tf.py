"""TensorFlow routes via tf2onnx: SavedModel, .keras, .h5, .tflite, in-memory Keras models."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

tf = pytest.importorskip("tensorflow")
tf2onnx_convert = pytest.importorskip("tf2onnx.convert")
keras = pytest.importorskip("keras")

from onnxq import runtime  # noqa: E402
from onnxq.convert import convert, from_keras, from_saved_model, from_tflite  # noqa: E402
from onnxq.errors import ConversionError, ModelLoadError  # noqa: E402


def _mlp() -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="scores")(hidden))


@pytest.fixture(scope="module")
def tf_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small Keras model saved in every format the converter accepts."""
    folder = tmp_path_factory.mktemp("tf")
    model = _mlp()
    # NOTE: export() and the TFLite converter print to stdout; keep test output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(folder / "saved_model", verbose=False)
        model.save(folder / "model.keras")
        model.save(folder / "model.h5")
        (folder / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return {"model": model, "folder": folder}


def _assert_matches_keras(onnx_model: Any, keras_model: Any, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    (got,) = runtime.run(onnx_model, {"features": x}).values()
    np.testing.assert_allclose(got, keras_model(x, training=False).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kind", "output"),
    [
        ("saved_model", "saved_model", "output_0"),
        ("model.keras", "keras", "scores"),
        ("model.h5", "h5", "scores"),
        ("model.tflite", "tflite", "output_0"),
    ],
)
def test_round_trip_matches_keras(tf_sources: dict[str, Any], name: str, kind: str, output: str) -> None:
    result = convert(tf_sources["folder"] / name)
    assert result.source_kind == kind and result.opset == 18
    assert result.input_names == ["features"] and result.output_names == [output]
    assert result.input_shapes == [["batch", 4]]
    assert max(result.max_abs_diff.values()) < 1e-4
    assert "random inputs" in result.notes[0]
    for batch in (1, 5):
        _assert_matches_keras(result.model, tf_sources["model"], batch)


def test_keras_axis_made_dynamic_and_named() -> None:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5, 4), name="tokens")
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(inputs))
    result = from_keras(model, dynamic={"tokens": "n", "tokens:1": "seq_len"}, opset=17, optimize=True)
    assert result.input_shapes == [["n", "seq_len", 4]] and result.opset == 17 and result.optimized
    for shape in [(1, 3, 4), (2, 7, 4)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        (got,) = runtime.run(result.model, {"tokens": x}).values()
        # NOTE: the Keras model itself insists on its declared (None, 5, 4); its layer does not.
        np.testing.assert_allclose(got, dense(x).numpy(), rtol=1e-4, atol=1e-5)


def test_example_inputs_are_used(tf_sources: dict[str, Any]) -> None:
    x = np.ones((3, 4), np.float32)
    result = from_saved_model(tf_sources["folder"] / "saved_model", example_inputs={"features": x})
    assert result.notes == []


def test_saved_model_static_axis_cannot_be_named(tf_sources: dict[str, Any]) -> None:
    with pytest.raises(
        ConversionError, match=r"axis 1 of 'features' is static \(4\); the SavedModel signature"
    ):
        from_saved_model(tf_sources["folder"] / "saved_model", dynamic={"features:1": "width"})


def test_unknown_signature(tf_sources: dict[str, Any]) -> None:
    with pytest.raises(
        ConversionError, match=r"no signature 'predict' \(signatures: serve, serving_default\)"
    ):
        from_saved_model(tf_sources["folder"] / "saved_model", signature="predict")


@pytest.mark.parametrize(
    ("opset", "message"), [(12, "too low"), (19, "too high; tf2onnx supports up to opset 18")]
)
def test_tf_opset_out_of_range(tf_sources: dict[str, Any], opset: int, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert(tf_sources["folder"] / "model.keras", opset=opset)


@pytest.mark.parametrize("name", ["model.keras", "model.h5", "model.tflite"])
def test_corrupt_files_are_load_errors(tmp_path: Path, name: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=rf"{name}: "):
        convert(bad)


def test_corrupt_saved_model_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load the SavedModel"):
        convert(tmp_path / "sm")


def test_checker_failure_is_a_conversion_error(
    tf_sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tf2onnx_convert.from_function

    def broken(*args: Any, **kwargs: Any) -> Any:
        proto, storage = real(*args, **kwargs)
        proto.graph.node[0].op_type = "NoSuchOp"
        return proto, storage

    monkeypatch.setattr(tf2onnx_convert, "from_function", broken)
    with pytest.raises(ConversionError, match="the converter's output is not a valid ONNX model: .*NoSuchOp"):
        convert(tf_sources["folder"] / "model.keras")


def test_tflite_example_inputs_by_signature_name(tf_sources: dict[str, Any]) -> None:
    x = np.full((2, 4), 0.5, np.float32)
    result = from_tflite(tf_sources["folder"] / "model.tflite", example_inputs={"features": x})
    assert result.notes == [] and result.input_names == ["features"]


def test_tflite_with_resource_variables_is_refused(tmp_path: Path) -> None:
    """tf2onnx cannot convert TFLite resource variables; the error must say so in one line."""

    class Counter(tf.Module):
        def __init__(self) -> None:
            self.total = tf.Variable(tf.zeros([4]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            self.total.assign_add(tf.reduce_sum(x, 0))
            return x + self.total

    module = Counter()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.experimental_enable_resource_variables = True
    with contextlib.redirect_stdout(io.StringIO()):
        (tmp_path / "counter.tflite").write_bytes(converter.convert())
    with pytest.raises(ConversionError, match=r"counter.tflite: tf2onnx cannot convert the file: ") as info:
        convert(tmp_path / "counter.tflite")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["saved_model", "model.tflite"])
def test_conversion_is_deterministic(tf_sources: dict[str, Any], name: str) -> None:
    """tf2onnx numbers names from a process-wide counter; two conversions must still give equal bytes."""
    first, second = (convert(tf_sources["folder"] / name).model for _ in range(2))
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()


@pytest.mark.parametrize("io_type", ["float32", "int8"])
def test_int8_tflite_is_compared_in_quantization_steps(io_type: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="probs")(
        keras.layers.Flatten()(hidden)))
    rng = np.random.default_rng(0)

    def samples() -> Any:
        for _ in range(16):
            yield [rng.random((1, 8, 8, 3), np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_type == "int8":
        converter.inference_input_type = converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        (tmp_path / "q.tflite").write_bytes(converter.convert())
    result = from_tflite(tmp_path / "q.tflite")
    # the softmax output of an int8 model has TFLite's fixed step 1/256; an int8 output is compared
    # in its own integers
    step = "1" if io_type == "int8" else "0.00390625"
    assert any(f"compared within 3 quantization steps of {step} " in note for note in result.notes), result.notes
    assert result.max_abs_diff["output_0"] <= 3 * float(step)
