"""CalibrationData: sources, order, re-reading, subsets, and one-line errors naming input and sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnxruntime.quantization import CalibrationDataReader

from onnxq.calibration import CalibrationData, CalibrationDataError, calibrate
from onnxq.errors import UserError
from tests.conftest import parse

MODEL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[N, 3, 4] x, int64[N] ids) => (float[N, 3, 4] y) {
  y = Relu(x)
}
"""


@pytest.fixture
def model() -> ir.Model:
    return parse(MODEL)


def _feed(n: int = 2, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3, 4), value, np.float32), "ids": np.arange(n, dtype=np.int64)}


def _labels_and_feeds(data: CalibrationData, model: ir.Model) -> list[tuple[str, dict[str, np.ndarray]]]:
    return list(data.feeds(model))


def _folder(tmp_path: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    root = tmp_path / "calib"
    root.mkdir()
    for i, feed in enumerate(feeds):
        np.savez(root / f"s{i:02d}.npz", **feed)
    return root


def test_folder_is_read_in_sorted_order_and_can_be_read_twice(tmp_path: Path, model: ir.Model) -> None:
    root = tmp_path / "calib"
    root.mkdir()
    for name, value in [("b.npz", 2.0), ("a.npz", 1.0), ("c.npz", 3.0)]:
        np.savez(root / name, **_feed(value=value))
    (root / "notes.txt").write_text("ignored")
    data = CalibrationData.from_source(root)
    assert data.reiterable and len(data) == 3
    for _ in range(2):
        got = _labels_and_feeds(data, model)
        assert [label for label, _ in got] == ["'a.npz'", "'b.npz'", "'c.npz'"]
        assert [float(f["x"].max()) for _, f in got] == [1.0, 2.0, 3.0]


def test_stacked_npz_drops_the_sample_axis_or_keeps_it_as_batch(tmp_path: Path, model: ir.Model) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    np.savez(tmp_path / "keep.npz", x=x, ids=np.arange(5))  # rank == model rank: batch of one
    np.savez(tmp_path / "drop.npz", x=x[:, None], ids=np.arange(5)[:, None])  # one more axis
    for name in ("keep.npz", "drop.npz"):
        got = _labels_and_feeds(CalibrationData.from_path(tmp_path / name), model)
        assert [label for label, _ in got] == [f"'{name}'[{i}]" for i in range(5)]
        for i, (_, feed) in enumerate(got):
            np.testing.assert_array_equal(feed["x"], x[i : i + 1])
            assert feed["x"].shape == (1, 3, 4) and feed["ids"].shape == (1,)


def test_list_generator_and_reader(model: ir.Model) -> None:
    feeds = [_feed(value=v) for v in (1.0, 2.0)]
    listed = CalibrationData.from_source(feeds)
    assert listed.reiterable and listed.length == 2
    assert len(_labels_and_feeds(listed, model)) == 2 == len(_labels_and_feeds(listed, model))

    once = CalibrationData.from_source(f for f in feeds)
    assert not once.reiterable and once.length is None
    assert [label for label, _ in _labels_and_feeds(once, model)] == ["0", "1"]
    with pytest.raises(CalibrationDataError, match="already read"):
        _labels_and_feeds(once, model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)
            self.calls = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            self.calls += 1
            return next(self.items, None)

    reader = Reader()
    got = _labels_and_feeds(CalibrationData.from_source(reader), model)
    assert len(got) == 2 and reader.calls == 3  # get_next() until None, used as it is


def test_safe_casts_are_applied(model: ir.Model) -> None:
    feed = {"x": np.ones((1, 3, 4), np.float64), "ids": np.arange(1, dtype=np.int32)}
    ((_, got),) = _labels_and_feeds(CalibrationData.from_source([feed]), model)
    assert got["x"].dtype == np.float32 and got["ids"].dtype == np.int64


def test_take_and_split(tmp_path: Path, model: ir.Model) -> None:
    root = _folder(tmp_path, [_feed(value=float(v)) for v in range(6)])
    data = CalibrationData.from_path(root)
    calib, held = data.split(holdout=2)
    assert (len(calib), len(held)) == (4, 2)
    assert [lbl for lbl, _ in calib.feeds(model)] == [f"'s{i:02d}.npz'" for i in range(4)]
    assert [lbl for lbl, _ in held.feeds(model)] == ["'s04.npz'", "'s05.npz'"]
    assert len(data.take(3)) == 3 and len(data.take(100)) == 6
    stacked = CalibrationData.from_source(
        {"x": np.zeros((5, 3, 4), np.float32), "ids": np.zeros((5,), np.int64)}
    )
    a, b = stacked.split(1)
    assert [lbl for lbl, _ in b.feeds(model)] == ["'arrays'[4]"]
    assert len(a.take(2)) == 2
    listed = CalibrationData.from_source([_feed() for _ in range(3)])
    assert [lbl for lbl, _ in listed.split(1)[1].feeds(model)] == ["2"]
    with pytest.raises(CalibrationDataError, match="cannot hold back 3"):
        listed.split(3)


def test_split_of_a_one_shot_source_buffers_to_disk(model: ir.Model) -> None:
    data = CalibrationData.from_source(_feed(value=float(v)) for v in range(4))
    calib, held = data.split(holdout=1)
    assert calib.reiterable and len(calib) == 3 and len(held) == 1
    folder = Path(calib.describe())
    assert folder.is_dir() and len(list(folder.glob("*.npz"))) == 4
    assert [float(f["x"].max()) for _, f in held.feeds(model)] == [3.0]
    # Calibrating on the split source twice works (read from disk again).
    assert calibrate(model, calib).samples == 3 == calibrate(model, calib).samples


BAD = [
    (
        {"x": np.ones((1, 3, 4), np.float32), "ids": np.arange(1), "extra": np.zeros(1)},
        "unknown input 'extra'",
    ),
    ({"x": np.ones((1, 3, 4), np.float32)}, "input 'ids' is missing"),
    (
        {"x": np.ones((1, 3, 4), np.int32), "ids": np.arange(1)},
        "input 'x' has dtype int32, the model expects float32",
    ),
    ({"x": np.ones((1, 3, 4), np.float32), "ids": np.ones(1, np.float32)}, "input 'ids' has dtype float32"),
    ({"x": np.ones((3, 4), np.float32), "ids": np.arange(1)}, "input 'x' has rank 2"),
    (
        {"x": np.ones((1, 3, 5), np.float32), "ids": np.arange(1)},
        r"input 'x' has shape \[1, 3, 5\].*axis 2 must be 4",
    ),
    ({"x": np.full((1, 3, 4), np.nan, np.float32), "ids": np.arange(1)}, "input 'x' contains 12 NaN/Inf"),
    ({"x": np.full((1, 3, 4), np.inf, np.float32), "ids": np.arange(1)}, "input 'x' contains 12 NaN/Inf"),
    (
        {"x": np.ones((2, 3, 4), np.float32), "ids": np.arange(3)},
        r"input 'ids' axis 0 \('N'\) is 3 but input 'x'",
    ),
    ({"x": np.ones((1, 3, 4), np.float32), "ids": np.array([2**40])}, None),  # int64 stays int64
]


@pytest.mark.parametrize("feed,message", BAD, ids=lambda v: str(v)[:40] if isinstance(v, str) else "")
def test_bad_samples_name_the_input_and_the_sample_in_one_line(
    tmp_path: Path, model: ir.Model, feed: dict[str, np.ndarray], message: str | None
) -> None:
    good = _feed(1)
    # In a folder: the message names the file.
    root = _folder(tmp_path, [good, good, feed])
    data = CalibrationData.from_path(root)
    if message is None:
        assert len(_labels_and_feeds(data, model)) == 3
        return
    with pytest.raises(CalibrationDataError, match=message) as err:
        _labels_and_feeds(data, model)
    text = str(err.value)
    assert "\n" not in text and text.startswith("sample 's02.npz': ")
    assert isinstance(err.value, UserError)
    # In a list: the message names the index.
    with pytest.raises(CalibrationDataError, match=message) as err:
        _labels_and_feeds(CalibrationData.from_source([good, feed]), model)
    assert str(err.value).startswith("sample 1: ")


def test_labels_beside_the_inputs_are_ignored(model: ir.Model) -> None:
    feed = {**_feed(1), "labels": np.zeros(1, np.int64)}
    ((_, got),) = _labels_and_feeds(CalibrationData.from_source([feed]), model)
    assert sorted(got) == ["ids", "x"]


def test_int64_values_that_do_not_fit_int32_are_refused() -> None:
    m = parse('<ir_version: 10, opset_import: ["" : 18]> g (int32[N] i) => (int32[N] o) { o = Identity(i) }')
    with pytest.raises(CalibrationDataError, match="sample 0: input 'i' has int64 values outside int32"):
        list(CalibrationData.from_source([{"i": np.array([2**40])}]).feeds(m))


def test_empty_and_missing_sources(tmp_path: Path, model: ir.Model) -> None:
    with pytest.raises(CalibrationDataError, match="calibration set is empty"):
        list(CalibrationData.from_source([]).feeds(model))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match=r"empty: no \.npz files"):
        CalibrationData.from_path(tmp_path / "empty")
    with pytest.raises(CalibrationDataError, match="calibration data not found"):
        CalibrationData.from_path(tmp_path / "nope")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match="broken.npz: cannot read"):
        CalibrationData.from_path(tmp_path / "broken.npz")
    np.savez(tmp_path / "uneven.npz", x=np.zeros((3, 3, 4)), ids=np.zeros(2))
    with pytest.raises(CalibrationDataError, match="arrays differ in sample count"):
        CalibrationData.from_path(tmp_path / "uneven.npz")
    with pytest.raises(CalibrationDataError, match="not supported"):
        CalibrationData.from_source(42)
    with pytest.raises(CalibrationDataError, match="sample 0: expected a dict"):
        list(CalibrationData.from_source([np.zeros(3)]).feeds(model))


def test_stacked_npz_reads_rows_lazily_with_the_same_values_as_numpy(tmp_path: Path, model: ir.Model) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    ids = np.arange(7, dtype=np.int64)
    np.savez(tmp_path / "stored.npz", x=x, ids=ids)
    np.savez_compressed(tmp_path / "compressed.npz", x=x, ids=ids)
    np.savez(tmp_path / "fortran.npz", x=np.asfortranarray(x), ids=ids)
    from onnxq.calibration.data import _npz_arrays, _StoredRows

    assert isinstance(_npz_arrays(tmp_path / "stored.npz")["x"], _StoredRows)  # not loaded whole
    for name in ("stored.npz", "compressed.npz", "fortran.npz"):
        got = [f for _, f in CalibrationData.from_path(tmp_path / name).feeds(model)]
        assert len(got) == 7
        for i, feed in enumerate(got):
            np.testing.assert_array_equal(feed["x"], x[i : i + 1])
            np.testing.assert_array_equal(feed["ids"], ids[i : i + 1])
    # The split of a stored .npz reads the right rows.
    _, held = CalibrationData.from_path(tmp_path / "stored.npz").split(2)
    np.testing.assert_array_equal(next(iter(held.feeds(model)))[1]["x"], x[5:6])


def test_materialize_keeps_what_a_stacked_source_means(tmp_path: Path, model: ir.Model) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)  # one more axis than the input
    data = CalibrationData.from_source({"x": x, "ids": np.arange(2)[:, None]})
    copy = data.materialize(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["00000000.npz", "00000001.npz"]
    got = [f["x"] for _, f in copy.feeds(model)]
    np.testing.assert_array_equal(got[1], x[1])
