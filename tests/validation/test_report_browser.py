"""HTML reports open in a real headless Chromium: every plot decodes and paints, no console errors.

The other report tests read the HTML as text; only a browser can say that the page really renders
(a truncated base64 payload, a bad data URI or a CSS rule that collapses the images all pass a text
check). The browser is Debian's ``chromium`` driven through ``chromedriver`` by selenium; ``.ci/run``
installs both when missing, so a machine without them FAILS here rather than skipping.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import onnxq
from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.ir.io import load_model, save_model

MODEL, DATA = str(example_model_path()), str(example_inputs_path())
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# NOTE: without the background-networking flags Chromium keeps dialling Google services, and this
# closed network refuses each connection; none of it concerns a local file.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
    "--hide-scrollbars",
]
_IMG_SRC = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
#: Plots each command's report draws: compare the per-layer SQNR, bench the latency, sweep the Pareto plot.
PLOTS = {"compare": 1, "bench": 1, "sweep": 1}
# The state of every <img> as the browser sees it, after layout.
_IMAGES_JS = """
return Array.from(document.images).map(function (img) {
  var box = img.getBoundingClientRect();
  return {complete: img.complete, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
          width: box.width, height: box.height, alt: img.alt};
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"headless browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} "
            "missing): run .ci/run or `apt-get install chromium chromium-driver`",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "headless browser test needs selenium: pip install -c constraints.txt -e '.[dev]'", pytrace=False
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="onnxq-chromium-") as profile:
        # NOTE: a new empty profile, so nothing from an earlier run (cache, crash state) is reused.
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(60)
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small HTML report per command, written by the CLI as a user would."""
    root = tmp_path_factory.mktemp("reports")
    model, _ = onnxq.quantize(load_model(example_model_path()), DATA, self_check=False)
    quantized = str(root / "q.onnx")
    save_model(model, quantized)
    paths = {kind: root / f"{kind}.html" for kind in PLOTS}
    commands = {
        "compare": ["compare", MODEL, quantized, "--data", DATA, "--max-accuracy-drop", "0.05"],
        "bench": ["bench", MODEL, quantized, "--runs", "5", "--warmup", "1", "--no-memory"],
        "sweep": [
            "sweep",
            MODEL,
            "--calib",
            DATA,
            "--data",
            DATA,
            "--out-dir",
            str(root / "sweep"),
            "--latency-budget",
            "0.2",
            "--strategies",
            "dynamic,static-minmax",
            "--max-accuracy-drop",
            "0.05",
        ],
    }
    for kind, args in commands.items():
        assert main([*args, "-q", "--report", str(paths[kind])]) == 0, kind
    return paths


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _pixels(png: bytes, size: tuple[int, int] | None = None) -> Any:
    """RGB pixels of a PNG as an int16 array, resized to ``size`` (width, height) when given."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        if size is not None and rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.int16)


def _colours(png: bytes) -> int:
    """Distinct colours in a PNG (capped at 256: enough to tell a painted plot from a blank box)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        colours = image.convert("RGB").getcolors(maxcolors=256)
    return 256 if colours is None else len(colours)


@pytest.mark.parametrize("kind", list(PLOTS))
def test_report_renders_its_plots_in_chromium(
    kind: str, browser: Any, reports: dict[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    path = reports[kind]
    sources = [base64.b64decode(data) for data in _IMG_SRC.findall(path.read_text(encoding="utf-8"))]
    assert len(sources) == PLOTS[kind]
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title.startswith(f"onnxq {kind}")

    images = browser.execute_script(_IMAGES_JS)
    assert len(images) == len(sources)
    for image, png in zip(images, sources, strict=True):
        # The browser decoded the very PNG the report embeds, and laid it out at a visible size.
        assert image["complete"] and (image["naturalWidth"], image["naturalHeight"]) == _png_size(png), image
        assert image["width"] > 100 and image["height"] > 100, image
        assert image["alt"], image

    # What Chromium painted: the page, and each plot on its own (scrolled into view by selenium).
    page = tmp_path / f"{kind}.png"
    assert browser.save_screenshot(str(page))
    shot = page.read_bytes()
    assert _png_size(shot)[0] > 0 and _colours(shot) > 2
    for i, (element, png) in enumerate(zip(browser.find_elements(By.TAG_NAME, "img"), sources, strict=True)):
        plot = tmp_path / f"{kind}-plot-{i + 1}.png"
        assert element.screenshot(str(plot))
        painted = _pixels(plot.read_bytes())
        # Axes, bars or points and text: a plot has far more than the two colours of a blank box.
        assert _colours(plot.read_bytes()) > 16, plot
        # Chromium painted the embedded plot itself, whole: at natural size the pixels are equal
        # (0 difference measured); a scaled-down plot is compared with a resampled copy.
        expected = _pixels(png, (painted.shape[1], painted.shape[0]))
        assert float(abs(painted - expected).mean()) < 4.0, plot

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
