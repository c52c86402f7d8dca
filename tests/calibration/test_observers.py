"""Observers against numpy ground truth; merging equals one pass; the range guards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxq.calibration.observers import (
    MIN_SPAN,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    safe_range,
)


def _chunks(seed: int = 0, n: int = 20) -> list[np.ndarray]:
    """Samples whose range grows over time (forces re-binning), shapes differ."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((50, 100 + i)) * (1 + i)).astype(np.float32) for i in range(n)]


def _all(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([c.reshape(-1) for c in chunks]).astype(np.float64)


def test_minmax_is_exact() -> None:
    chunks = _chunks()
    obs = MinMaxObserver()
    for c in chunks:
        obs.update(c)
    data = _all(chunks)
    r = obs.range()
    assert (r.min, r.max) == (float(data.min()), float(data.max()))
    assert obs.samples == len(chunks)


def test_moving_average_follows_the_momentum_formula() -> None:
    chunks = _chunks()
    obs = MovingAverageMinMaxObserver(momentum=0.1)
    for c in chunks:
        obs.update(c)
    lo, hi = float(chunks[0].min()), float(chunks[0].max())
    for c in chunks[1:]:
        lo += 0.1 * (float(c.min()) - lo)
        hi += 0.1 * (float(c.max()) - hi)
    r = obs.range()
    assert r.min == pytest.approx(lo) and r.max == pytest.approx(hi)
    assert r.max < float(_all(chunks).max())  # averaging lies inside the extremes


def test_moving_average_plain_mean_merges_exactly() -> None:
    chunks = _chunks()
    one, a, b = (MovingAverageMinMaxObserver(momentum=None) for _ in range(3))
    for i, c in enumerate(chunks):
        one.update(c)
        (a if i < 7 else b).update(c)
    a.merge(b)
    assert a.range().min == pytest.approx(np.mean([c.min() for c in chunks]))
    assert math.isclose(a.range().max, one.range().max) and math.isclose(a.range().min, one.range().min)


def test_histogram_percentile_is_close_to_numpy() -> None:
    chunks = _chunks()
    obs = HistogramObserver(percentile=99.9)
    for c in chunks:
        obs.update(c)
    data = _all(chunks)
    r = obs.range()
    tolerance = 2 * obs.width  # linear interpolation inside one bin
    assert r.max == pytest.approx(np.percentile(data, 99.9), abs=tolerance)
    assert r.min == pytest.approx(np.percentile(data, 0.1), abs=tolerance)
    assert obs.width <= (data.max() - data.min()) / obs.bins * 4  # at least bins/2 bins used


def test_histogram_percentile_keeps_the_min_of_non_negative_tensors() -> None:
    rng = np.random.default_rng(1)
    data = np.maximum(rng.standard_normal(50_000), 0).astype(np.float32) + 0.5
    obs = HistogramObserver(percentile=99.0)
    obs.update(data)
    r = obs.range()
    assert r.min == pytest.approx(float(data.min()))
    assert r.max == pytest.approx(np.percentile(data, 99.0), abs=2 * obs.width)


def test_merge_equals_one_pass_exactly() -> None:
    chunks = _chunks(seed=3, n=30)
    one, a, b = HistogramObserver(bins=512), HistogramObserver(bins=512), HistogramObserver(bins=512)
    for i, c in enumerate(chunks):
        one.update(c)
        (a if i % 3 else b).update(c)  # interleaved: different first samples, different widths
    a.merge(b)
    assert a.width == one.width
    assert (a.min, a.max, a.samples) == (one.min, one.max, one.samples)

    def by_grid(h: HistogramObserver) -> dict[int, int]:
        return {h.first + i: int(n) for i, n in enumerate(h.counts) if n}

    assert by_grid(a) == by_grid(one)
    for method in ("percentile", "entropy", "mse"):
        assert a.range(method) == one.range(method)
    mm_one, mm_a, mm_b = MinMaxObserver(), MinMaxObserver(), MinMaxObserver()
    for i, c in enumerate(chunks):
        mm_one.update(c)
        (mm_a if i % 2 else mm_b).update(c)
    mm_a.merge(mm_b)
    assert mm_a.range() == mm_one.range()


def test_histogram_counts_every_value_in_its_bin() -> None:
    chunks = _chunks(seed=5)
    obs = HistogramObserver(bins=256)
    for c in chunks:
        obs.update(c)
    data = _all(chunks)
    assert int(obs.counts.sum()) == data.size
    lo_edge = obs.first * obs.width
    assert lo_edge <= data.min() and data.max() < lo_edge + obs.bins * obs.width
    expected = np.bincount(np.floor(data / obs.width).astype(np.int64) - obs.first, minlength=obs.bins)
    np.testing.assert_array_equal(obs.counts, expected)


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_clipping_methods_cut_outliers_on_a_gaussian(method: str) -> None:
    rng = np.random.default_rng(2)
    # NOTE: MSE clips only when outliers are rare enough that their clipping error is below the
    # rounding noise a wide range adds to every value: 3 in a million here.
    data = rng.standard_normal(1_000_000).astype(np.float32)
    data[:3] = 60.0
    obs = HistogramObserver()
    for part in np.array_split(data, 10):
        obs.update(part)
    r = obs.range(method)
    assert r.max <= float(data.max())
    assert 2.0 < r.max < 0.5 * float(data.max()), r  # clipped below the outliers, not in the bulk
    assert r.min < 0 and -r.max <= r.min  # symmetric for signed tensors


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_clipping_methods_on_non_negative_search_only_the_upper_bound(method: str) -> None:
    rng = np.random.default_rng(4)
    data = np.abs(rng.standard_normal(1_000_000)).astype(np.float32) + 0.25
    data[:1] = 40.0
    obs = HistogramObserver()
    obs.update(data)
    r = obs.range(method)
    assert r.min == pytest.approx(float(data.min()))
    assert 1.5 < r.max < 20.0, r


def test_entropy_keeps_the_full_range_when_there_is_nothing_to_clip() -> None:
    data = np.linspace(-1, 1, 101, dtype=np.float32)  # fewer occupied bins than levels
    obs = HistogramObserver(bins=64)
    obs.update(data)
    r = obs.range("entropy")
    assert r.min == pytest.approx(-1.0) and r.max == pytest.approx(1.0, abs=obs.width)


@pytest.mark.parametrize(
    "make", [MinMaxObserver, MovingAverageMinMaxObserver, HistogramObserver], ids=lambda f: f.__name__
)
def test_constant_zero_tensor_gets_a_tiny_positive_span(make: type) -> None:
    obs = make()
    for _ in range(3):
        obs.update(np.zeros((4, 4), np.float32))
    r = obs.range()
    assert r.min == 0.0 and r.max == MIN_SPAN
    if isinstance(obs, HistogramObserver):
        for method in ("percentile", "entropy", "mse"):
            r = obs.range(method)
            assert r.min == 0.0 and 0.0 < r.max <= 1e-5 and math.isfinite(r.max)


def test_non_finite_values_are_ignored_and_counted() -> None:
    obs, hist = MinMaxObserver(), HistogramObserver()
    values = np.array([1.0, np.nan, -2.0, np.inf, -np.inf], np.float32)
    for o in (obs, hist):
        o.update(values)
        assert o.nonfinite == 3
    assert obs.range() == safe_range(-2.0, 1.0)
    assert hist.range("percentile").min >= -2.0 and hist.range("percentile").max <= 1.0


def test_an_observer_without_finite_values_refuses_a_range() -> None:
    obs = HistogramObserver()
    obs.update(np.array([np.nan], np.float32))
    obs.update(np.zeros((0,), np.float32))
    assert obs.empty
    with pytest.raises(ValueError, match="no finite value"):
        obs.range()


def test_safe_range_guards() -> None:
    assert safe_range(3.0, 3.0).max > 3.0
    assert safe_range(-3.0, -3.0).min < -3.0 and safe_range(-3.0, -3.0).max == -3.0
    with pytest.raises(ValueError):
        safe_range(0.0, float("inf"))


def test_histogram_of_values_far_from_zero_stays_small() -> None:
    obs = HistogramObserver()
    obs.update(np.full(10, 1000.0, np.float32))
    obs.update(np.array([1000.0, 1000.5], np.float32))
    for method in ("percentile", "entropy", "mse"):
        r = obs.range(method)
        assert (r.min, r.max) == (1000.0, 1000.5), method


def _reference_entropy_stop(hist: np.ndarray, levels: int, stops: np.ndarray) -> int:
    """TensorRT's KL threshold search written plainly, one candidate at a time."""
    best, best_stop = math.inf, len(hist)
    for stop in stops:
        ref = hist[:stop]
        p = ref.copy()
        p[-1] += hist[stop:].sum()
        q = np.zeros(stop)
        edges = [(g * stop + levels - 1) // levels for g in range(levels + 1)]  # first bin of group g
        for g in range(levels):
            lo, hi = edges[g], edges[g + 1]
            occupied = p[lo:hi] > 0
            if occupied.any():
                q[lo:hi][occupied] = ref[lo:hi].sum() / occupied.sum()
        if q.sum() <= 0:
            continue
        pn, qn = p / p.sum(), q / q.sum()
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
        if kl < best - 1e-12:
            best, best_stop = kl, int(stop)
    return best_stop


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_matches_a_plain_reference_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(100_000).astype(np.float32) * rng.uniform(0.5, 3)
    data[: 5 + seed * 10] *= 12.0  # a heavy tail
    obs = HistogramObserver(bins=1024, candidates=64)
    obs.update(data)
    hist, width, nonneg = obs._magnitude(max_bins=2048)
    hist = hist[: len(np.trim_zeros(hist, "b"))]
    stops = obs._candidate_stops(len(hist), 128)
    expected = _reference_entropy_stop(hist, 128, stops)
    r = obs.range("entropy")
    assert r.max == pytest.approx(min(expected * width, float(data.max())))


def test_entropy_keeps_most_of_a_post_relu_range() -> None:
    # Half the mass is exact zeros, the rest a smooth positive tail, as after every ReLU: the zero
    # bin must not make a short threshold look lossless (it clipped resnet_digits' ReLUs to a third).
    rng = np.random.default_rng(0)
    obs = HistogramObserver()
    for _ in range(20):
        obs.update(np.maximum(rng.standard_normal(20000).astype(np.float32) * 2.0, 0.0))
    full = obs.range("minmax").max
    assert obs.range("entropy").max > 0.5 * full
