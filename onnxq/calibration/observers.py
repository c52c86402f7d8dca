"""Streaming, mergeable observers: each keeps a small state per tensor and turns it into a range.

Every observer has ``update(array)`` (one sample's activation), ``merge(other)`` (combine two
observers of the same tensor, e.g. from two workers) and ``range() -> TensorRange``. Memory is
O(bins) whatever the number of samples.

- :class:`MinMaxObserver`: exact running min/max.
- :class:`MovingAverageMinMaxObserver`: per-sample min/max averaged with a momentum (ORT's
  ``moving_average``/TensorRT style, ``avg += momentum * (x - avg)``, seeded with the first sample).
- :class:`HistogramObserver`: one histogram, three range choices (``percentile``, ``entropy``,
  ``mse``), selectable per call so one calibration pass serves every histogram method.

Why a hand-written histogram: onnxruntime's histogram calibrators keep every activation of every
sample (memory grows with the data set) and numpy's ``histogram`` needs the range up front. Here
bins lie on a grid anchored at 0 whose width is a power of two; when new data falls outside the
current bins the width doubles and adjacent bins merge *exactly* (bin ``j`` at width ``w`` is bin
``floor(j/2)`` at ``2w``). So the histogram is built in one pass, never interpolates counts, and
merging two histograms gives the same counts as one pass over all the data. A source that can be
read only once (a ``CalibrationDataReader``) therefore never needs buffering.

Guards: non-finite activation values are ignored (counted in ``nonfinite``); a range is never
empty, NaN or infinite: a constant tensor ``c`` gets the span ``[c, c + d]`` (``[c - d, c]`` when
``c < 0``) with ``d = max(|c| * 2**-10, 2**-20)``, so a constant-zero tensor gets ``[0, 2**-20]``.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import numpy as np

from onnxq.calibration.ranges import TensorRange

#: Smallest span a range may have (used for constant tensors); see the module docstring.
MIN_SPAN = 2.0**-20
HISTOGRAM_METHODS = ("percentile", "entropy", "mse")


def safe_range(lo: float, hi: float) -> TensorRange:
    """A finite, non-empty range from ``lo``/``hi`` (widened when they are equal)."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"non-finite range [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    # NOTE: a span at float32 precision of the values (or below 2**-100) is a constant tensor.
    if hi - lo <= max(abs(lo), abs(hi)) * 2.0**-20 or hi - lo < 2.0**-100:
        span = max(abs(lo) * 2.0**-10, MIN_SPAN)
        if lo < 0:
            lo -= span
        else:
            hi += span
    return TensorRange(lo, hi)


def _finite(array: np.ndarray) -> tuple[np.ndarray, int]:
    """The array as float (flattened), without non-finite values, and how many were dropped."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:
        flat = flat.astype(np.float32)
    lo, hi = (flat.min(), flat.max()) if flat.size else (0.0, 0.0)
    if math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return flat, 0
    keep = np.isfinite(flat)
    return flat[keep], int(flat.size - np.count_nonzero(keep))


class Observer(abc.ABC):
    """State of one tensor's values over the samples seen so far."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        self.samples = 0
        self.nonfinite = 0

    @abc.abstractmethod
    def update(self, array: np.ndarray) -> None:
        """Adds one sample's values."""

    @abc.abstractmethod
    def merge(self, other: Observer) -> None:
        """Adds another observer's state (of the same kind and options) to this one."""

    @abc.abstractmethod
    def range(self) -> TensorRange:
        """The calibrated range; ``ValueError`` when no finite value was ever seen."""

    @property
    def empty(self) -> bool:
        """True when no finite value has been observed."""
        return self._empty()

    @abc.abstractmethod
    def _empty(self) -> bool: ...

    def _check_same(self, other: Observer) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")


class MinMaxObserver(Observer):
    """Exact running minimum and maximum."""

    kind = "minmax"

    def __init__(self) -> None:
        super().__init__()
        self.min = math.inf
        self.max = -math.inf

    def update(self, array: np.ndarray) -> None:
        flat, dropped = _finite(array)
        self.samples += 1
        self.nonfinite += dropped
        if flat.size:
            self.min = min(self.min, float(flat.min()))
            self.max = max(self.max, float(flat.max()))

    def merge(self, other: Observer) -> None:
        self._check_same(other)
        assert isinstance(other, MinMaxObserver)
        self.samples += other.samples
        self.nonfinite += other.nonfinite
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def _empty(self) -> bool:
        return self.min > self.max

    def range(self) -> TensorRange:
        if self.empty:
            raise ValueError("no finite value observed")
        return safe_range(self.min, self.max)


class MovingAverageMinMaxObserver(Observer):
    """Per-sample min/max averaged with ``momentum`` (``avg += momentum * (x - avg)``).

    ``momentum=None`` averages plainly (every sample weighs the same). ``merge`` combines two
    averages weighted by their sample counts: exact for ``momentum=None``, an approximation for an
    exponential average (which depends on the order of the samples).
    """

    kind = "moving_average"

    def __init__(self, momentum: float | None = 0.01) -> None:
        super().__init__()
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.count = 0  # samples with at least one finite value
        self.avg_min = 0.0
        self.avg_max = 0.0

    def update(self, array: np.ndarray) -> None:
        flat, dropped = _finite(array)
        self.samples += 1
        self.nonfinite += dropped
        if not flat.size:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.count += 1
        c = 1.0 / self.count if self.momentum is None or self.count == 1 else self.momentum
        self.avg_min += c * (lo - self.avg_min)
        self.avg_max += c * (hi - self.avg_max)

    def merge(self, other: Observer) -> None:
        self._check_same(other)
        assert isinstance(other, MovingAverageMinMaxObserver)
        self.samples += other.samples
        self.nonfinite += other.nonfinite
        total = self.count + other.count
        if other.count:
            a, b = self.count / total, other.count / total
            self.avg_min = a * self.avg_min + b * other.avg_min
            self.avg_max = a * self.avg_max + b * other.avg_max
        self.count = total

    def _empty(self) -> bool:
        return self.count == 0

    def range(self) -> TensorRange:
        if self.empty:
            raise ValueError("no finite value observed")
        return safe_range(self.avg_min, self.avg_max)


class HistogramObserver(Observer):
    """A histogram with exact power-of-two rebinning; ranges by percentile, entropy or MSE.

    Args:
        bins: Number of bins kept (memory: ``bins`` int64). The used range always spans more than
            ``bins / 2`` bins, so the resolution is at least ``range / bins * 2``.
        method: Default method of :meth:`range` (``percentile``, ``entropy`` or ``mse``).
        percentile: Percent of values kept by ``percentile`` (each clipped tail holds
            ``100 - percentile`` percent).
        num_quantized_bins: Levels of the quantized distribution in ``entropy`` (128 = int8 on
            one side of 0, as TensorRT; 255 levels are used for non-negative tensors).
        candidates: Number of thresholds tried by ``entropy`` and ``mse``.
    """

    kind = "histogram"

    def __init__(
        self,
        bins: int = 4096,
        method: str = "percentile",
        *,
        percentile: float = 99.999,
        num_quantized_bins: int = 128,
        candidates: int = 256,
    ) -> None:
        super().__init__()
        if bins < 16 or bins % 2:
            raise ValueError(f"bins must be an even number >= 16, got {bins}")
        if method not in HISTOGRAM_METHODS:
            raise ValueError(f"unknown histogram method {method!r} (choose {', '.join(HISTOGRAM_METHODS)})")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.bins = bins
        self.method = method
        self.percentile = percentile
        self.num_quantized_bins = num_quantized_bins
        self.candidates = candidates
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = 0.0  # power of two; 0 = nothing seen yet
        self.first = 0  # grid index of counts[0]: it covers [first*width, (first+1)*width)
        self.min = math.inf
        self.max = -math.inf

    # --- building ---------------------------------------------------------------------
    def _empty(self) -> bool:
        return self.width == 0.0

    def _fits(self, width: float, lo: float, hi: float) -> bool:
        return math.floor(hi / width) - math.floor(lo / width) < self.bins

    def _initial_width(self, lo: float, hi: float) -> float:
        span = max(hi - lo, max(abs(lo), abs(hi)) * 2.0**-20, 2.0**-60)
        width = 2.0 ** math.ceil(math.log2(span / self.bins))
        while not self._fits(width, lo, hi):
            width *= 2.0
        return width

    def _coarsen(self, width: float, first: int) -> None:
        """Re-bins counts onto the grid of ``width`` (a power-of-two multiple) starting at ``first``."""
        factor = int(round(width / self.width))
        idx = np.arange(self.bins, dtype=np.int64) + self.first
        new = np.floor_divide(idx, factor) - first
        used = self.counts != 0
        counts = np.zeros(self.bins, dtype=np.int64)
        np.add.at(counts, new[used], self.counts[used])
        self.counts, self.width, self.first = counts, width, first

    def _place(self, lo: float, hi: float) -> None:
        """Makes the histogram cover ``[lo, hi]``, doubling the bin width as needed."""
        lo, hi = min(lo, self.min), max(hi, self.max)
        width = self.width
        while not self._fits(width, lo, hi):
            width *= 2.0
        first = math.floor(lo / width)
        # NOTE: keep the window where it is unless it must move, so that bins stay put.
        if width == self.width and first >= self.first and math.floor(hi / width) < self.first + self.bins:
            return
        # Centre the data inside the window only as far as needed (start at the lowest bin).
        self._coarsen(width, first)

    def update(self, array: np.ndarray) -> None:
        flat, dropped = _finite(array)
        self.samples += 1
        self.nonfinite += dropped
        if not flat.size:
            return
        lo, hi = float(flat.min()), float(flat.max())
        if self._empty():
            self.width = self._initial_width(lo, hi)
            self.first = math.floor(lo / self.width)
        else:
            self._place(lo, hi)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        # NOTE: the width is a power of two, so x * (1 / width) is exact (in float32 too: the
        # width keeps |x / width| far below float32's range) and floor() puts every value in the
        # same bin whatever path (single pass or merge) built the histogram.
        scaled = flat * flat.dtype.type(1.0 / self.width)
        idx = np.floor(scaled, out=scaled).astype(np.int64)
        idx -= self.first
        self.counts += np.bincount(idx, minlength=self.bins)

    def merge(self, other: Observer) -> None:
        self._check_same(other)
        assert isinstance(other, HistogramObserver)
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        self.samples += other.samples
        self.nonfinite += other.nonfinite
        if other._empty():
            return
        if self._empty():
            self.counts, self.width, self.first = other.counts.copy(), other.width, other.first
            self.min, self.max = other.min, other.max
            return
        theirs = HistogramObserver(self.bins)
        theirs.counts, theirs.width, theirs.first = other.counts.copy(), other.width, other.first
        theirs.min, theirs.max = other.min, other.max
        width = max(self.width, other.width)
        lo, hi = min(self.min, other.min), max(self.max, other.max)
        while not self._fits(width, lo, hi):
            width *= 2.0
        first = math.floor(lo / width)
        for hist in (self, theirs):
            hist._coarsen(width, first)
        self.counts += theirs.counts
        self.min, self.max = lo, hi

    # --- reading ----------------------------------------------------------------------
    def _edges(self) -> np.ndarray:
        """Bin edges, with the outermost ones clamped to the observed min/max."""
        edges = (np.arange(self.bins + 1, dtype=np.float64) + self.first) * self.width
        return np.clip(edges, self.min, self.max)

    def _quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the data lies (linear inside a bin)."""
        cum = np.cumsum(self.counts)
        total = cum[-1]
        target = q * total
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, self.bins - 1)
        before = cum[j - 1] if j else 0
        inside = self.counts[j]
        edges = self._edges()
        frac = 0.0 if inside == 0 else (target - before) / inside
        return float(edges[j] + min(max(frac, 0.0), 1.0) * (edges[j + 1] - edges[j]))

    def percentile_range(self, percentile: float | None = None) -> TensorRange:
        """Clips ``100 - percentile`` percent of the values from the upper tail, and from the
        lower tail too when the tensor has negative values (non-negative tensors keep their min)."""
        p = self.percentile if percentile is None else percentile
        tail = (100.0 - p) / 100.0
        hi = self._quantile(1.0 - tail)
        lo = self._quantile(tail) if self.min < 0 else self.min
        return safe_range(max(lo, self.min), min(hi, self.max))

    def _magnitude(self, max_bins: int | None = None) -> tuple[np.ndarray, float, bool]:
        """Histogram of the values' magnitude from 0, its bin width, and whether the tensor is
        non-negative. Folding the negative side is exact because the grid is anchored at 0; the
        width is doubled (exactly, as in re-binning) until at most ``bins`` bins reach the
        largest magnitude, so a tensor far from 0 does not need a huge array."""
        signed = self.min < 0
        used = np.flatnonzero(self.counts)
        idx = used.astype(np.int64) + self.first
        mag = np.where(idx >= 0, idx, -idx - 1)
        factor = 1
        while int(mag.max()) // factor >= (max_bins or self.bins):
            factor *= 2
        mag //= factor
        hist = np.zeros(int(mag.max()) + 1, dtype=np.float64)
        np.add.at(hist, mag, self.counts[used].astype(np.float64))
        return hist, self.width * factor, not signed

    def _candidate_stops(self, nbins: int, minimum: int) -> np.ndarray:
        """Threshold bin counts to try: about ``candidates`` of them, always including all bins."""
        start = min(minimum, nbins)
        stops = np.unique(np.linspace(start, nbins, num=max(2, self.candidates)).round().astype(np.int64))
        return stops[stops >= 1]

    def _finish(self, threshold: float, nonneg: bool) -> TensorRange:
        if nonneg:
            return safe_range(self.min, min(self.max, max(threshold, self.min)))
        return safe_range(max(self.min, -threshold), min(self.max, threshold))

    def entropy_range(self, num_quantized_bins: int | None = None) -> TensorRange:
        """TensorRT's KL-divergence threshold on the magnitude histogram.

        For each candidate threshold the reference distribution P is the histogram up to it with
        the clipped tail added to its last bin; Q is P quantized to ``num_quantized_bins`` levels
        (255 for non-negative tensors, whose lower bound stays at the min) and expanded back over
        the non-empty bins. The threshold with the least KL(P || Q) wins.
        """
        # TensorRT's 2048 bins: the search is O(bins x candidates) and finer bins change little.
        hist, width, nonneg = self._magnitude(max_bins=2048)
        levels = (num_quantized_bins or self.num_quantized_bins) * (2 if nonneg else 1) - (1 if nonneg else 0)
        nbins = len(np.trim_zeros(hist, "b")) or 1
        hist = hist[:nbins].copy()
        if nbins <= levels:
            return self._finish(nbins * width, nonneg)
        # NOTE: the exact zeros after a ReLU (often half the mass) sit in bin 0 and are represented
        # exactly by any threshold; left in, they make every short threshold look lossless and the
        # search clips post-ReLU tensors to a third of their range (resnet_digits: accuracy 0.99 ->
        # 0.41). NVIDIA's pytorch-quantization levels the zero bin the same way.
        if nbins > 1:
            hist[0] = hist[1]
        stops = self._candidate_stops(nbins, levels)
        cum = np.cumsum(hist)
        total = float(cum[-1])
        bins = np.arange(nbins)
        best, best_stop = math.inf, nbins
        # NOTE: all candidates of a block at once (rows), blocks bound the temporary memory.
        for start in range(0, len(stops), 64):
            stop = stops[start : start + 64]
            rows = np.arange(len(stop))[:, None]
            inside = bins[None, :] < stop[:, None]
            ref = np.where(inside, hist[None, :], 0.0)
            p = ref.copy()
            p[rows[:, 0], stop - 1] += total - cum[stop - 1]  # the clipped tail joins the last bin
            # Quantize ref into `levels` groups; spread each group's mass over its non-empty bins
            # (TensorRT's expansion).
            group = np.where(inside, (bins[None, :] * levels) // stop[:, None], 0)
            nonzero = p > 0
            flat = (rows * levels + group).ravel()
            mass = np.bincount(flat, weights=ref.ravel(), minlength=len(stop) * levels).reshape(-1, levels)
            size = np.bincount(flat, weights=nonzero.ravel().astype(np.float64), minlength=len(stop) * levels)
            size = size.reshape(-1, levels)
            q = np.where(nonzero, mass[rows, group] / np.maximum(size[rows, group], 1.0), 0.0)
            qs = q.sum(axis=1)
            p_n = p / total
            q_n = q / np.where(qs > 0, qs, 1.0)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                # Bins where P has mass but Q none (only the last, tail-loaded bin can) get a tiny
                # Q so the divergence stays finite, as in TensorRT's smoothing.
                terms = np.where(p_n > 0, p_n * np.log(p_n / np.maximum(q_n, 1e-12)), 0.0)
            kl = np.where(qs > 0, terms.sum(axis=1), np.inf)
            j = int(np.argmin(kl))
            if kl[j] < best:
                best, best_stop = float(kl[j]), int(stop[j])
        return self._finish(best_stop * width, nonneg)

    def mse_range(self) -> TensorRange:
        """The clipping threshold with the least expected squared error of 8-bit quantization.

        Per candidate threshold ``t`` (bin centres as values): clipped values cost ``(|x| - t)^2``,
        values inside cost the uniform rounding noise ``step^2 / 12`` with ``step = t / 127``
        (symmetric int8) or ``(t - min) / 255`` for non-negative tensors.
        """
        hist, width, nonneg = self._magnitude()
        nbins = len(np.trim_zeros(hist, "b")) or 1
        hist = hist[:nbins]
        centres = (np.arange(nbins) + 0.5) * width
        if nonneg:
            centres = np.clip(centres, self.min, self.max)
        stops = self._candidate_stops(nbins, 1)
        thresholds = stops * width
        steps = (thresholds - (self.min if nonneg else 0.0)) / (255.0 if nonneg else 127.0)
        steps = np.maximum(steps, 1e-30)
        over = np.maximum(centres[None, :] - thresholds[:, None], 0.0)
        inside = over == 0.0
        errors = (hist[None, :] * np.where(inside, steps[:, None] ** 2 / 12.0, over**2)).sum(axis=1)
        best = int(np.argmin(errors))
        return self._finish(float(thresholds[best]), nonneg)

    def range(self, method: str | None = None, **options: Any) -> TensorRange:
        """The range by ``method`` (default: the one given at construction; ``minmax`` too)."""
        if self._empty():
            raise ValueError("no finite value observed")
        method = method or self.method
        if method == "minmax":  # the exact extremes are tracked beside the histogram
            return safe_range(self.min, self.max)
        if method == "percentile":
            return self.percentile_range(**options)
        if method == "entropy":
            return self.entropy_range(**options)
        if method == "mse":
            return self.mse_range(**options)
        raise ValueError(f"unknown histogram method {method!r} (choose {', '.join(HISTOGRAM_METHODS)})")
