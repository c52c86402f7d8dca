"""Shared pieces of the zoo scripts: the digits split, seeding, and the build record.

Every script trains on the same stratified split of scikit-learn's bundled 8x8 digits
(1347 train / 450 held-out), so metrics are comparable across models and nothing is
downloaded. ``BuiltModel`` is what a script hands back to ``models/build.py``.
"""

from __future__ import annotations

import functools
import io
import os
import random
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

#: Seed used by every script; change it and every cached model rebuilds (the source hash changes).
SEED = 0
#: Samples per calibration set, drawn from the training split.
CALIB_SAMPLES = 256
DIGITS_DATASET = "sklearn digits 8x8 (1347 train / 450 held-out, stratified, random_state=0)"


@dataclass(frozen=True)
class DigitsSplit:
    """Digits images scaled to [0, 1], float32 [N, 8, 8], with int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    """Returns the fixed train/held-out split of the bundled digits set (read-only arrays)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=SEED
    )
    split = DigitsSplit(x_train, y_train, x_test, y_test)
    for array in (split.x_train, split.y_train, split.x_test, split.y_test):
        array.flags.writeable = False
    return split


def calib_indices(n_train: int, count: int = CALIB_SAMPLES, seed: int = SEED) -> np.ndarray:
    """A fixed random subset of training indices for the calibration set."""
    return np.random.default_rng(seed).permutation(n_train)[: min(count, n_train)]


def seed_python_and_numpy(seed: int = SEED) -> None:
    """Seeds ``random`` and numpy's global generator (scripts also use explicit generators)."""
    random.seed(seed)
    np.random.seed(seed)


def save_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-for-byte reproducible (fixed zip timestamps).

    ``np.savez`` stamps each member with the current time, so committed sample files
    would change on every rebuild.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


@dataclass(frozen=True)
class Metric:
    """How a model is scored: ``kind`` (see :func:`models.zoo.compute_metric`) on output ``output``.

    ``also`` lists more kinds computed on the same held-out outputs and recorded in the
    manifest's ``metrics`` (e.g. character accuracy next to sequence accuracy).
    """

    name: str
    kind: str
    output: int = 0
    also: tuple[str, ...] = ()


@dataclass
class Evaluation:
    """Feeds (keyed by ONNX input name) and the labels they are scored against."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray


@dataclass
class BuiltModel:
    """One zoo entry as produced by a script, before build.py writes and measures it.

    Attributes:
        reference: The source framework's scored output (``metric.output``) on
            ``held_out.inputs``; build.py records the largest difference to onnxruntime's as
            a check of the conversion.
        extra_evals: More evaluations recorded in the manifest under ``metrics`` (e.g. the
            same model at another sequence length, which also proves dynamic dims work).
    """

    name: str
    model: ir.Model
    architecture: str
    source_framework: str
    route: str
    converter: str
    params: int
    dataset: str
    metric: Metric
    held_out: Evaluation
    calib: dict[str, np.ndarray]
    reference: np.ndarray | None = None
    trained: bool = True
    notes: str = ""
    extra_evals: dict[str, Evaluation] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
