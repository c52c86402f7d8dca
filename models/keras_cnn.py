"""Keras CNN digit classifier, converted twice: via a SavedModel and via TFLite.

One Keras 3 model (Conv2D + BatchNorm + ReLU, MaxPool, Conv2D, MaxPool, Dense, softmax)
trained on digits in NHWC, then:

* ``keras_cnn_savedmodel``: ``model.export(dir)`` (SavedModel) -> tf2onnx.
* ``keras_cnn_tflite``: the same SavedModel -> float32 .tflite -> tf2onnx.
* ``keras_cnn_op11``: the same model in a ``tf.function`` -> tf2onnx ``from_function`` at
  opset 11 (as older pipelines export), called directly because ``onnxq.convert`` only
  accepts opsets 13-18; dims as tf2onnx names them (``unk__N``).

Both keep TensorFlow's NHWC input ``[batch, 8, 8, 1]`` and the input/output names the
converter gives, so the zoo has the layout transposes and naming of real TF exports.
(tf2onnx's ``from_keras`` does not work with Keras 3, hence the SavedModel.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from models import _common, _export

ENTRIES = ("keras_cnn_savedmodel", "keras_cnn_tflite", "keras_cnn_op11")
#: Opset of the tf2onnx ``from_function`` variant (below what ``onnxq.convert`` accepts).
LEGACY_OPSET = 11
EPOCHS = 20
BATCH = 32
ARCHITECTURE = "CNN (Keras): Conv+BN+ReLU, MaxPool, Conv+ReLU, MaxPool, Dense 64, Dense 10 + softmax"


def _tensorflow() -> tuple[Any, Any]:
    """Imports TF/Keras quietly, seeded and deterministic, with one thread per pool."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(_common.SEED)
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # NOTE: TF's runtime already started in this process; its thread pools are fixed
    return tf, keras


def make_model(keras: Any) -> Any:
    """The Keras model; input ``image`` [batch, 8, 8, 1]."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="keras_cnn",
    )


def nhwc(x: np.ndarray) -> np.ndarray:
    """Digits [N, 8, 8] -> float32 [N, 8, 8, 1]."""
    return np.array(x[..., None], dtype=np.float32)


def build(workdir: Path) -> list[_common.BuiltModel]:
    """Trains the Keras model, exports a SavedModel and a .tflite, converts both."""
    tf, keras = _tensorflow()
    _common.seed_python_and_numpy()
    split = _common.digits_split()
    x_train, x_test = nhwc(split.x_train), nhwc(split.x_test)
    model = make_model(keras)
    steps = EPOCHS * ((len(x_train) + BATCH - 1) // BATCH)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, split.y_train, epochs=EPOCHS, batch_size=BATCH, shuffle=True, verbose=0)
    reference = model.predict(x_test, batch_size=256, verbose=0)

    saved_model = workdir / "saved_model"
    model.export(os.fspath(saved_model), verbose=False)
    tflite_path = workdir / "model.tflite"
    tflite_path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(os.fspath(saved_model)).convert())

    spec = tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")
    call = tf.function(
        lambda image: {"output_0": model(image, training=False)}, input_signature=[spec], autograph=False
    )

    params = int(model.count_params())
    calib = x_train[_common.calib_indices(len(x_train))]
    built = []
    for name, route, exported in (
        (
            "keras_cnn_savedmodel",
            "Keras 3 model.export (SavedModel) -> tf2onnx",
            _export.export_saved_model(saved_model),
        ),
        (
            "keras_cnn_tflite",
            "Keras 3 SavedModel -> TFLite (float32) -> tf2onnx",
            _export.export_tflite(tflite_path),
        ),
        (
            "keras_cnn_op11",
            f"Keras 3 model in a tf.function -> tf2onnx from_function (opset {LEGACY_OPSET})",
            _export.export_tf_function(call, [spec], opset=LEGACY_OPSET),
        ),
    ):
        input_name = exported.model.graph.inputs[0].name or ""
        built.append(
            _common.BuiltModel(
                name=name,
                model=exported.model,
                architecture=ARCHITECTURE,
                source_framework="keras",
                route=route,
                converter=exported.converter,
                params=params,
                dataset=_common.DIGITS_DATASET + "; NHWC",
                metric=_common.Metric("accuracy", "accuracy"),
                held_out=_common.Evaluation({input_name: x_test}, split.y_test.copy()),
                calib={input_name: calib},
                reference=reference,
                notes="output is softmax probabilities; input/output names are the converter's",
            )
        )
    return built
