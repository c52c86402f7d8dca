"""Read side of the model zoo: the manifest, the data files, and metrics with onnxruntime.

Tests of transformations use this to measure an accuracy drop::

    from models import zoo
    zoo.ensure_built(["digits_cnn"])           # builds into models/.cache/ unless cached
    base = zoo.evaluate("digits_cnn")          # FP32 metric of the zoo model
    drop = base - zoo.evaluate("digits_cnn", "quantized.onnx")

The zoo folder is ``models/.cache/`` unless ``out_dir`` or ``$ONNXQ_ZOO_DIR`` says otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

DEFAULT_DIR = Path(__file__).resolve().parent / ".cache"
MANIFEST_NAME = "manifest.json"
#: Batch used to run models whose batch dimension is dynamic.
EVAL_BATCH = 64
#: Class index of the CTC blank symbol in CTC models' outputs.
CTC_BLANK = 0
METRIC_KINDS = ("accuracy", "cosine", "ctc_sequence_accuracy", "ctc_char_accuracy", "perplexity")


class ZooError(Exception):
    """The zoo is not built, or a model/metric is unknown; the message says what to run."""


def zoo_dir(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """The zoo folder: ``out_dir``, else ``$ONNXQ_ZOO_DIR``, else ``models/.cache``."""
    if out_dir is not None:
        return Path(out_dir)
    return Path(os.environ.get("ONNXQ_ZOO_DIR", DEFAULT_DIR))


def load_manifest(out_dir: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Returns the manifest's entries by model name (empty when nothing is built yet)."""
    path = zoo_dir(out_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text())["models"])


def entry(name: str, out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The manifest entry of one model; raises ``ZooError`` naming the build command if absent."""
    manifest = load_manifest(out_dir)
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none built"
        raise ZooError(
            f"model {name!r} is not in the zoo at {zoo_dir(out_dir)} ({known}); "
            f"run: python models/build.py --only {name}"
        )
    return manifest[name]


def model_path(name: str, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the zoo model's FP32 .onnx file."""
    return zoo_dir(out_dir) / entry(name, out_dir)["files"]["onnx"]


def load_eval(
    name: str, out_dir: str | os.PathLike[str] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out inputs (by ONNX input name) and labels."""
    path = zoo_dir(out_dir) / entry(name, out_dir)["files"]["eval"]
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    labels = arrays.pop("labels")
    return arrays, labels


def load_calib(name: str, out_dir: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """Calibration inputs (by ONNX input name), drawn from the training split."""
    path = zoo_dir(out_dir) / entry(name, out_dir)["files"]["calib"]
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def run_onnx(
    onnx_path: str | os.PathLike[str],
    inputs: Mapping[str, np.ndarray],
    *,
    batch_size: int = EVAL_BATCH,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    optimize: bool = True,
) -> list[np.ndarray]:
    """Runs the model over inputs batched along axis 0; returns every output, concatenated.

    ``optimize=False`` runs the graph as written (``ORT_DISABLE_ALL``): a QDQ graph then computes its
    ONNX semantics exactly, with no fused integer kernel (for targets that do not run here, such as
    TensorRT, whose int32 accumulation does not saturate the way u8s8 kernels on AVX2 do).

    A model with a fixed batch size gets batches of exactly that size (the last one padded
    by repeating its final sample, and the padding dropped from the outputs).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(os.fspath(onnx_path), options, providers=list(providers))
    fixed = {i.name: i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    step = min(fixed.values()) if fixed else batch_size
    total = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    for start in range(0, total, step):
        feed = {key: value[start : start + step] for key, value in inputs.items()}
        count = len(next(iter(feed.values())))
        if fixed and count < step:
            feed = {
                key: np.concatenate([v, np.repeat(v[-1:], step - count, axis=0)]) for key, v in feed.items()
            }
        chunks.append([out[:count] for out in session.run(None, feed)])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def compute_metric(kind: str, output: np.ndarray, labels: np.ndarray) -> float:
    """Scores output 0 against labels.

    Kinds:
        accuracy: ``argmax(output, -1) == labels``; labels [N] or per position [N, T].
        cosine: mean over samples of the cosine similarity between output and labels, both
            flattened per sample; used by speed-only models with random weights, whose
            labels are the source framework's FP32 outputs (so FP32 scores ~1.0).
        ctc_sequence_accuracy: greedy CTC decoding of [N, T, C] scores (blank 0) equals the
            label row exactly; labels [N, L] hold classes 1..C-1.
        ctc_char_accuracy: 1 - (edit distance / label length) over all rows, floored at 0.
        perplexity: ``exp`` of the mean cross-entropy of logits [N, T, V] against the next tokens
            [N, T] (lower is better: recorded beside a primary metric, never one).
    """
    if kind == "accuracy":
        return float(np.mean(output.argmax(-1) == labels))
    if kind == "cosine":
        a = output.reshape(len(output), -1).astype(np.float64)
        b = labels.reshape(len(labels), -1).astype(np.float64)
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        return float(np.mean(np.sum(a * b, axis=1) / norms))
    if kind == "ctc_sequence_accuracy":
        decoded = ctc_greedy_decode(output)
        return float(np.mean([d == list(row) for d, row in zip(decoded, labels.tolist(), strict=True)]))
    if kind == "ctc_char_accuracy":
        decoded = ctc_greedy_decode(output)
        errors = sum(_edit_distance(d, list(row)) for d, row in zip(decoded, labels.tolist(), strict=True))
        return max(0.0, 1.0 - errors / labels.size)
    if kind == "perplexity":
        logits = output.reshape(-1, output.shape[-1]).astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        picked = logits[np.arange(len(logits)), labels.reshape(-1)]
        return float(np.exp(np.mean(log_norm - picked)))
    raise ZooError(f"unknown metric kind {kind!r}; expected one of {', '.join(METRIC_KINDS)}")


def ctc_greedy_decode(scores: np.ndarray, blank: int = CTC_BLANK) -> list[list[int]]:
    """Best-path decoding of [N, T, C] scores: argmax per step, merge repeats, drop blanks."""
    decoded = []
    for path in scores.argmax(-1).tolist():
        merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        decoded.append([c for c in merged if c != blank])
    return decoded


def _edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def evaluate(
    name: str,
    onnx_path: str | os.PathLike[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    optimize: bool = True,
) -> float:
    """The model's primary metric with onnxruntime on its held-out split.

    Args:
        name: Zoo model name (see ``load_manifest()``).
        onnx_path: A transformed copy to score; defaults to the zoo's FP32 model. It must keep
            the input names and output 0's meaning.
        out_dir: Zoo folder (see :func:`zoo_dir`).
        providers: onnxruntime execution providers.
        optimize: ``False`` scores the graph as written (see :func:`run_onnx`).
    """
    info = entry(name, out_dir)
    inputs, labels = load_eval(name, out_dir)
    path = onnx_path if onnx_path is not None else zoo_dir(out_dir) / info["files"]["onnx"]
    metric = info["metric"]
    output = run_onnx(path, inputs, providers=providers, optimize=optimize)[metric.get("output", 0)]
    return compute_metric(metric["kind"], output, labels)


def ensure_built(
    names: Sequence[str] | None = None, out_dir: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Builds the named models (all when ``None``) unless cached; returns the manifest."""
    from models import build  # NOTE: imported lazily; reading the zoo must not need torch/TF

    build.build(only=names, out_dir=zoo_dir(out_dir))
    return load_manifest(out_dir)
