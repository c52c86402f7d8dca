"""Mixed precision to an accuracy budget: ``quantize_mixed(model, calib, max_accuracy_drop=0.01)``.

The search, on the optimized float model and ONE calibration (``Ranges`` shared by every variant):

1. Uniform INT8 is scored on a held set. Within the budget: it is the answer (no node is left in
   float without cause).
2. Otherwise the sensitivity of every candidate node is measured (:mod:`.sensitivity`, cached),
   and nodes move to float greedily by metric recovered per unit of compute (MACs from shapes:
   a cheap, sensitive layer goes first): the first LINEAR_STEPS one at a time, then a bisection
   over the length of that order's prefix; each point a real evaluation and a point of the
   accuracy-drop / speedup curve.
3. Pruning: float nodes, least sensitive first, go back to INT8 in halving chunks (delta
   debugging) and stay there when the budget still holds, so every node left in float is one
   that had to be (within PRUNE_EVALUATIONS evaluations).
4. The final model goes through ``quantize()`` (its self-check removes QDQ groups that no longer
   fuse, such as a lone pair stranded between float nodes) and is evaluated again; while it
   misses the budget the next node in the order moves to float (verified, not assumed).

Precisions: int8 or float on every target (fp16 for TensorRT is not offered yet). The choice is
written as an overrides file (JSON, node -> precision with the measured figures) that
``onnxq quantize --overrides FILE`` reads back; :func:`plot_curve` draws the curve.

Hand-written: onnxruntime offers only hand-written ``TensorQuantOverrides``; NNCF's accuracy
control reverts layers by a ranking but does not weigh their compute or measure latency.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.calibration import CalibrationData, calibrate
from onnxq.calibration.ranges import Ranges, model_fingerprint
from onnxq.errors import OptionError, UserError
from onnxq.ir.interop import copy_model
from onnxq.quantization.quantize import QuantizeReport, _prepare, quantize
from onnxq.quantization.sensitivity import (
    Evaluator,
    Metric,
    NodeSensitivity,
    Sensitivity,
    Variants,
    analyze,
    cache_key,
    exact,
    load_cached,
    save_cached,
)
from onnxq.targets import Target, get_target
from onnxq.validation.compare import load_metric

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "float")
#: Held-back calibration samples the search scores on when no ``data`` is given.
HELD_SAMPLES = 64
#: Seconds of interleaved timed runs per curve point.
CURVE_LATENCY_S = 0.4
OVERRIDES_FORMAT = "onnxq-overrides/1"
#: Greedy steps taken one node at a time before the search bisects over the order.
LINEAR_STEPS = 4
#: Most evaluations the pruning pass spends moving float nodes back to int8.
PRUNE_EVALUATIONS = 48


class OverridesError(UserError):
    """An overrides file cannot be read, names an unknown node, or asks for an unknown precision."""


# --- overrides file --------------------------------------------------------------------------
def load_overrides(path: str | os.PathLike[str]) -> dict[str, str]:
    """Reads an overrides file: ``{"nodes": {name: "int8"|"float" or {"precision": ...}}}``."""
    where = str(path)
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise OverridesError(f"{where}: cannot read the overrides file ({e.strerror or e})") from None
    except ValueError as e:
        raise OverridesError(f"{where}: not valid JSON ({e})") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, dict):
        raise OverridesError(f"{where}: expected a JSON object with a \"nodes\" object (node -> precision)")
    return parse_overrides(nodes, where=where)


def parse_overrides(nodes: Mapping[str, Any], *, where: str = "overrides") -> dict[str, str]:
    """Checks node -> precision entries (a string, or an object with ``precision``)."""
    found: dict[str, str] = {}
    for name, entry in nodes.items():
        precision = entry.get("precision") if isinstance(entry, dict) else entry
        if precision not in PRECISIONS:
            raise OverridesError(f"{where}: node '{name}': unknown precision {precision!r} "
                                 f"(expected {' or '.join(PRECISIONS)})")
        found[str(name)] = str(precision)
    return found


def check_override_nodes(model: ir.Model, overrides: Mapping[str, str], *, where: str = "overrides") -> None:
    """Raises OverridesError naming the first node the (optimized) model does not have."""
    names = {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.name}
    for name in overrides:
        if name not in names:
            raise OverridesError(f"{where}: node '{name}' is not in the model (after the optimize preset; "
                                 "names come from --save-overrides or 'onnxq inspect')")


def overrides_patterns(overrides: Mapping[str, str] | None, exclude: Sequence[str]) -> list[str]:
    """``exclude`` with float-pinned nodes added and int8-pinned exact names removed."""
    if not overrides:
        return list(exclude)
    pinned_int8 = {n for n, p in overrides.items() if p == "int8"}
    kept = [p for p in exclude if p not in pinned_int8]
    return kept + [exact(n) for n, p in sorted(overrides.items()) if p == "float"]


def save_overrides(path: str | os.PathLike[str], report: MixedReport) -> None:
    """Writes the assignment as an overrides file, most sensitive node first."""
    nodes: dict[str, Any] = {}
    floats = {f.node for f in report.float_nodes}
    for pin, precision in sorted(report.pinned.items()):
        nodes[pin] = {"precision": precision, "why": "pinned by the given overrides"}
    ranked = sorted(report.sensitivity.nodes, key=lambda n: -n.recovered) if report.sensitivity else []
    total = sum(n.flops for n in ranked) or 1.0
    for n in ranked:
        nodes[n.node] = {
            "precision": "float" if n.node in floats else "int8",
            "op_type": n.op_type,
            "recovered": round(n.recovered, 6),
            "compute_share": round(n.flops / total, 6),
            **({"alone_drop": round(n.alone, 6)} if n.alone is not None else {}),
        }
    doc = {
        "format": OVERRIDES_FORMAT,
        "comment": "node -> precision (int8 or float); edit and pass to 'onnxq quantize --overrides FILE'. "
                   f"'recovered' is the {report.metric} recovered when only that node stays float.",
        "metric": report.metric,
        "max_accuracy_drop": report.budget,
        "nodes": nodes,
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


# --- report ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One measured assignment: nodes in float, metric drop, speedup over FP32 (None: not timed)."""

    floats: int
    drop: float
    speedup: float | None
    added: str | None = None
    chosen: bool = False


@dataclasses.dataclass(frozen=True)
class FloatNode:
    node: str
    op_type: str
    recovered: float
    compute_share: float


@dataclasses.dataclass
class MixedReport:
    """What :func:`quantize_mixed` chose and measured (``quantize`` is the final model's report)."""

    budget: float
    metric: str
    reference_score: float
    uniform_drop: float
    final_drop: float
    candidates: int
    float_nodes: list[FloatNode]
    curve: list[CurvePoint]
    sensitivity: Sensitivity | None
    search_evaluations: int
    seconds: dict[str, float]
    pinned: dict[str, str]
    quantize: QuantizeReport
    held_samples: int
    met: bool = True
    cache_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "metric": self.metric,
            "met": self.met,
            "reference_score": self.reference_score,
            "uniform_drop": self.uniform_drop,
            "final_drop": self.final_drop,
            "held_samples": self.held_samples,
            "candidates": self.candidates,
            "int8_candidates": self.candidates - len(self.float_nodes),
            "float_nodes": [dataclasses.asdict(f) for f in self.float_nodes],
            "pinned": dict(self.pinned),
            "curve": [dataclasses.asdict(p) for p in self.curve],
            "sensitivity": None if self.sensitivity is None else {
                **self.sensitivity.to_json(), "cached": self.sensitivity.cached},
            "search_evaluations": self.search_evaluations,
            "cache_file": self.cache_file,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }

    def lines(self) -> list[str]:
        out = [f"mixed precision: budget {self.budget:g} drop in {self.metric} "
               f"(FP32 {self.reference_score:.4f}, {self.held_samples} held samples)",
               f"  uniform int8 drop {self.uniform_drop:.4f}; chosen drop {self.final_drop:.4f} "
               + ("(within budget)" if self.met else "(BUDGET NOT MET)")]
        if not self.float_nodes:
            out.append(f"  all {self.candidates} quantizable compute nodes in int8"
                       + (" (uniform int8 meets the budget)" if self.uniform_drop <= self.budget else ""))
        else:
            out.append(f"  {self.candidates - len(self.float_nodes)} of {self.candidates} compute nodes int8; "
                       f"kept in float:")
            out.extend(f"    {f.node} ({f.op_type}): recovers {f.recovered:+.4f} alone, "
                       f"{f.compute_share:.1%} of the compute" for f in self.float_nodes)
        removed = self.quantize.stats.get("self-check.unfused_qdq_removed", 0)
        if removed:
            out.append(f"  {removed} more QDQ group(s) left float by the self-check: onnxruntime did not fuse them "
                       "(see the diagnostics above)")
        for name, precision in sorted(self.pinned.items()):
            out.append(f"  pinned {precision}: {name}")
        if self.sensitivity is not None:
            s = self.sensitivity
            out.append(f"  sensitivity: {len(s.nodes)} nodes, {s.evaluations} evaluations, {s.seconds:.1f} s"
                       + (" (from cache)" if s.cached else ""))
        out.append(f"  search: {self.search_evaluations} evaluations")
        chosen = next((p for p in self.curve if p.chosen), None)
        if chosen is not None and chosen.speedup is not None:
            out.append(f"  speedup over FP32 (1 thread, interleaved medians): {chosen.speedup:.2f}x")
            if chosen.speedup < 1.0:
                out.append("  warning: the chosen model is slower than FP32 here; the float model meets the budget "
                           "too (rerun on an idle machine, or keep FP32)")
        return out


def plot_curve(report: MixedReport, path: str | os.PathLike[str]) -> None:
    """Accuracy drop against speedup as nodes move to float, the chosen point marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in report.curve if p.speedup is not None]
    speedups = [float(p.speedup or 0.0) for p in points]
    if not points:
        raise OptionError("no latency was measured for the curve (measure_latency=False)")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    ax.plot(speedups, [p.drop for p in points], "o-", color="tab:blue",
            label="nodes moved to float (greedy order)")
    for p in points:
        ax.annotate(str(p.floats), (p.speedup or 0, p.drop), textcoords="offset points", xytext=(4, 4), fontsize=7)
    chosen = [p for p in points if p.chosen]
    if chosen:
        ax.plot([float(chosen[0].speedup or 0.0)], [chosen[0].drop], "*", ms=16, color="tab:red",
                label=f"chosen: {chosen[0].floats} in float")
    ax.axhline(report.budget, ls="--", color="gray", label=f"budget {report.budget:g}")
    ax.axvline(1.0, ls=":", color="gray")
    ax.set_xlabel("speedup over FP32 (1 thread)")
    ax.set_ylabel(f"drop in {report.metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # NOTE: no version stamp, so reruns compare equal
    plt.close(fig)


# --- data ------------------------------------------------------------------------------------
def load_eval_set(data: str | os.PathLike[str], labels: str | os.PathLike[str] | None,
                  model: ir.Model) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Feeds (one per sample) and labels from ``--data`` (.npz with a sample axis, or a folder)
    and ``--labels`` (.npy, .npz, or text); a ``labels`` array inside the data .npz is used too."""
    path = Path(data)
    if not path.exists():
        raise OptionError(f"--data {path}: no such file or folder")
    found: np.ndarray | None = None
    if path.is_file():
        from onnxq.runtime import load_inputs

        arrays = load_inputs(path)
        found = arrays.pop("labels", None)
        lengths = {len(v) for v in arrays.values() if np.ndim(v)}
        if len(lengths) != 1:
            raise OptionError(f"--data {path}: arrays need one common leading sample axis")
        count = lengths.pop()
        feeds = [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]
    else:
        feeds = [f for _, f in CalibrationData.from_source(path).feeds(model)]
    if labels is not None:
        lpath = Path(labels)
        try:
            if lpath.suffix == ".npy":
                found = np.load(lpath)
            elif lpath.suffix == ".npz":
                with np.load(lpath) as z:
                    found = z["labels"] if "labels" in z.files else z[z.files[0]]
            else:
                found = np.loadtxt(lpath, dtype=np.int64, ndmin=1)
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise OptionError(f"--labels {lpath}: cannot read labels ({e})") from None
    if found is not None and len(found) != len(feeds):
        raise OptionError(f"--labels: {len(found)} labels for {len(feeds)} samples")
    return feeds, found


# --- the search ------------------------------------------------------------------------------
class _Search:
    """Scores float-node sets (memoized) and times them for the curve."""

    def __init__(self, variants: Variants, evaluator: Evaluator, reference: ir.Model, *, latency: bool) -> None:
        self.variants = variants
        self.evaluator = evaluator
        self.scores: dict[frozenset[str], float] = {}
        self.latency = latency
        self.evaluations = 0
        if latency:
            from onnxq.validation.bench import session

            self.feed = self.evaluator.batches[0]
            if len(self.evaluator.batches) < self.evaluator.samples:
                # NOTE: samples were stacked on their batch axis: time one; a sample that was not
                # stacked (a 0-d input such as a sample rate) is fed as it is.
                self.feed = {k: v[:1] for k, v in self.feed.items()}
            self.float_session = session(reference)

    def drop(self, floats: frozenset[str]) -> float:
        if floats not in self.scores:
            self.scores[floats] = self.evaluator.score(self.variants.build(sorted(floats)))
            self.evaluations += 1
        return self.evaluator.drop(self.scores[floats])

    def speedup(self, model: ir.Model) -> float | None:
        if not self.latency:
            return None
        from onnxq.validation.bench import interleaved_times, session

        quant = session(model)
        feed = self.feed
        times = interleaved_times([lambda: self.float_session.run(None, feed), lambda: quant.run(None, feed)],
                                  warmup=2, min_runs=5, max_runs=200, budget_s=CURVE_LATENCY_S)
        return float(np.median(times[0]) / max(np.median(times[1]), 1e-12))


def _order(nodes: Sequence[NodeSensitivity]) -> list[NodeSensitivity]:
    """Greedy order: metric recovered per share of compute, helpful nodes first."""
    total = sum(n.flops for n in nodes) or 1.0

    def key(n: NodeSensitivity) -> tuple[int, float, float]:
        # NOTE: with the drop of each node quantized alone measured, a node that hurts alone counts
        # even when leaving it float alone recovers nothing (the error is spread over many nodes).
        gain = max(n.recovered, n.alone or 0.0)
        share = max(n.flops / total, 1e-6)
        return (0 if gain > 0 else 1, -(gain / share), -gain)

    return sorted(nodes, key=key)


def _prune(floats: list[str], drop: float, by_name: Mapping[str, NodeSensitivity], search: _Search,
           budget: float) -> tuple[list[str], float, list[str]]:
    """Moves float nodes back to int8 while the budget holds; returns (floats, drop, moved back)."""
    todo = sorted(floats, key=lambda n: (by_name[n].recovered, floats.index(n)))
    kept = list(floats)
    returned: list[str] = []
    chunk = max(1, len(todo) // 2)
    spent = 0
    while todo and spent < PRUNE_EVALUATIONS:
        i = 0
        while i < len(todo) and spent < PRUNE_EVALUATIONS:
            group = set(todo[i:i + chunk])
            trial = [f for f in kept if f not in group]
            trial_drop = search.drop(frozenset(trial))
            spent += 1
            if trial_drop <= budget:
                kept, drop = trial, trial_drop
                returned.extend(n for n in todo[i:i + chunk])
                del todo[i:i + chunk]
            else:
                i += chunk
        if chunk == 1:
            break
        chunk = max(1, chunk // 2)
    return kept, drop, returned


def quantize_mixed(
    model: ir.Model,
    calibration: Any,
    *,
    max_accuracy_drop: float,
    target: str | Target = "ort-cpu",
    method: str = "minmax",
    per_channel: bool = True,
    cpu: str | None = None,
    exclude: Sequence[str] = (),
    overrides: Mapping[str, str] | str | os.PathLike[str] | None = None,
    ranges: Ranges | str | None = None,
    save_ranges: str | None = None,
    data: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | np.ndarray | None = None,
    metric: Metric | str | None = None,
    optimize: bool = True,
    self_check: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    only_quantized: bool = False,
    measure_latency: bool = True,
    progress: bool = False,
    deadline: float | None = None,
    executor: Any = None,
) -> tuple[ir.Model, MixedReport]:
    """Static INT8 with as few nodes in float as the accuracy budget needs (see the module docstring).

    Args:
        model: The float model (not modified; the result is a new model).
        calibration: Calibration samples (any ``quantize()`` source).
        max_accuracy_drop: Largest drop of the metric against FP32, in the metric's units
            (0.01 = one point of accuracy or agreement).
        target / method / per_channel / cpu / exclude: As for ``quantize()``.
        overrides: Node -> ``"int8"`` | ``"float"`` pins, or an overrides file (:func:`load_overrides`).
        ranges / save_ranges: Reuse / write the calibrated ranges.
        data / labels: A held set (``--data``, ``--labels``) to score on; default: the last
            calibration samples (held back from calibration), scored by agreement with FP32.
        metric: ``fn(outputs, labels) -> float`` (higher is better) or ``"module:function"``.
        optimize / self_check: As for ``quantize()`` (the self-check runs on the final model).
        cache_dir: Folder of the sensitivity cache; ``None``: no cache.
        only_quantized: Also measure each node's drop when it alone is quantized.
        measure_latency: Time each curve point against FP32.
        progress: Progress bar over the sensitivity analysis.
        deadline: A ``time.perf_counter()`` value after which the analysis stops measuring (nodes
            left unmeasured go last in the order) and the pruning stops; the result is then
            time-dependent (the accuracy guard's ``--time-limit``).
        executor: Runs the sensitivity analysis's evaluations in parallel (local processes or
            Ray, :mod:`onnxq.framework.executor`); the result equals the serial one.
    """
    if not (max_accuracy_drop >= 0 and math.isfinite(max_accuracy_drop)):
        raise OptionError(f"--max-accuracy-drop {max_accuracy_drop}: expected a number >= 0")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    profile = target if isinstance(target, Target) else get_target(target, cpu=cpu)
    reference = copy_model(model)
    # NOTE: every variant is a session built from bytes, where a relative external-data path would
    # resolve against the working directory: the weights are read into memory once, here.
    ir.external_data.load_to_model(reference)
    prepared = copy_model(reference)
    prep_report = QuantizeReport(target=profile.name, mode="static", method=method, per_channel=per_channel)
    _prepare(prepared, prep_report, optimize=optimize, per_channel=per_channel, target=profile)
    per_channel = prep_report.per_channel
    if isinstance(overrides, (str, os.PathLike)):
        pinned, where = load_overrides(overrides), str(overrides)
    else:
        pinned, where = parse_overrides(overrides or {}), "overrides"
    check_override_nodes(prepared, pinned, where=where)
    base_exclude = overrides_patterns(pinned, exclude)
    seconds["prepare"] = time.perf_counter() - clock

    # Held set and calibration set.
    clock = time.perf_counter()
    calib = CalibrationData.from_source(calibration) if calibration is not None else None
    label_array = labels if isinstance(labels, np.ndarray) else None
    if data is not None:
        feeds, found_labels = load_eval_set(data, None if isinstance(labels, np.ndarray) else labels, prepared)
        label_array = label_array if label_array is not None else found_labels
    else:
        if calib is None:
            raise OptionError("mixed precision needs calibration samples (--calib) or a held set (--data)")
        if not calib.reiterable:
            calib = calib.materialize()
        total = len(calib)
        held_count = min(HELD_SAMPLES, max(1, total // 4))
        calib, held = calib.split(holdout=held_count)
        feeds = [f for _, f in held.feeds(prepared)]
        if label_array is not None and len(label_array) != len(feeds):
            raise OptionError(f"labels: {len(label_array)} for {len(feeds)} held samples; give --data with them")
    metric_fn = load_metric(metric) if isinstance(metric, str) else metric
    evaluator = Evaluator(reference, feeds, labels=label_array, metric=metric_fn,
                          metric_name=metric if isinstance(metric, str) else None)

    if ranges is not None:
        found = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges, fingerprint=model_fingerprint(prepared))
    else:
        from onnxq.passes.quantization import tensors_to_calibrate
        from onnxq.quantization.quantize import _METHOD_NAMES

        if calib is None:
            raise OptionError("static quantization needs calibration data (--calib PATH) or --ranges FILE")
        tensors = tensors_to_calibrate(prepared, profile, exclude=tuple(base_exclude))
        found = calibrate(prepared, calib, method=_METHOD_NAMES.get(method, method), tensors=tensors,
                          progress=progress)
    if save_ranges:
        found.save(save_ranges)
    seconds["calibrate"] = time.perf_counter() - clock

    variants = Variants(prepared, found, profile, per_channel=per_channel, exclude=base_exclude)
    search = _Search(variants, evaluator, reference, latency=measure_latency)
    pinned_int8 = sorted(n for n, p in pinned.items() if p == "int8")
    pinned_float = {n for n, p in pinned.items() if p == "float"}

    # Sensitivity (cached) and the greedy search.
    clock = time.perf_counter()
    key = cache_key(model_fingerprint(prepared), found, evaluator,
                    {"target": profile.name, "cpu": getattr(profile, "cpu", None), "per_channel": per_channel,
                     "exclude": base_exclude, "pinned": sorted(pinned.items()), "only_quantized": only_quantized})
    sensitivity = load_cached(cache_dir, key) if cache_dir is not None else None
    uniform_drop = search.drop(frozenset())
    cache_file = None
    if sensitivity is None and uniform_drop > max_accuracy_drop:
        sensitivity = analyze(variants, evaluator, pinned=[*pinned_int8, *pinned_float],
                              only_quantized=only_quantized, progress=progress, deadline=deadline,
                              executor=executor)
        if cache_dir is not None:
            cache_file = str(save_cached(cache_dir, key, sensitivity))
    elif cache_dir is not None and sensitivity is not None:
        cache_file = str(Path(cache_dir) / f"sensitivity-{key[:24]}.json")
    seconds["sensitivity"] = time.perf_counter() - clock

    clock = time.perf_counter()
    order = _order(sensitivity.nodes) if sensitivity is not None else []
    by_name = {n.node: n for n in order}
    names = [n.node for n in order]
    points = {0: uniform_drop}

    def prefix(k: int) -> float:
        points[k] = search.drop(frozenset(names[:k]))
        return points[k]

    # The first few nodes one at a time (the common case: a handful of fragile layers), then
    # bisection over the greedy order's prefix length (the drop falls, roughly monotonically, as
    # the prefix grows): log2(N) evaluations instead of N when the error is spread over many nodes.
    chosen = len(names)
    if uniform_drop <= max_accuracy_drop:
        chosen = 0
    else:
        k = next((k for k in range(1, min(LINEAR_STEPS, len(names)) + 1) if prefix(k) <= max_accuracy_drop), None)
        if k is not None:
            chosen = k
        elif len(names) > LINEAR_STEPS and prefix(len(names)) <= max_accuracy_drop:
            lo, hi = LINEAR_STEPS, len(names)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if prefix(mid) <= max_accuracy_drop else (mid, hi)
            chosen = hi
    floats = names[:chosen]
    remaining = names[chosen:]
    drop = points.get(chosen, uniform_drop)
    # Pruning: back to int8 while the budget holds, least sensitive first, in halving chunks (a
    # delta-debugging pass: a whole chunk goes back at once when it can, single nodes at the end),
    # so every node left in float is one that had to be; at most PRUNE_EVALUATIONS evaluations.
    if drop <= max_accuracy_drop and len(floats) > 1 and (deadline is None or time.perf_counter() < deadline):
        floats, drop, returned = _prune(floats, drop, by_name, search, max_accuracy_drop)
        remaining[:0] = returned
    curve = [CurvePoint(k, d, search.speedup(variants.build(names[:k])) if measure_latency else None,
                        names[k - 1] if k else None) for k, d in sorted(points.items())]

    # Final model through quantize() (self-check cleans stranded QDQ), verified by a real evaluation.
    while True:
        final = copy_model(prepared)
        # NOTE: the held feeds go in as "calibration" data with the ranges given: nothing is calibrated
        # again, and the self-check compares on real samples, not on a generated input.
        final, qreport = quantize(final, feeds if self_check else None, target=profile, method=method,
                                  per_channel=per_channel,
                                  exclude=[*base_exclude, *(exact(f) for f in sorted(floats))], ranges=found,
                                  optimize=False, self_check=self_check, reference=reference if self_check else None,
                                  progress=False)
        final_drop = evaluator.drop(evaluator.score(final))
        search.evaluations += 1
        if final_drop <= max_accuracy_drop or not remaining:
            break
        floats.append(remaining.pop(0))
    seconds["search"] = time.perf_counter() - clock

    speed = search.speedup(final) if measure_latency else None
    curve.append(CurvePoint(len(floats), final_drop, speed, None, chosen=True))
    total_flops = sum(n.flops for n in order) or 1.0
    float_nodes = [FloatNode(f, by_name[f].op_type, by_name[f].recovered, by_name[f].flops / total_flops)
                   for f in floats]
    n_candidates = len(sensitivity.nodes) if sensitivity is not None else _count_candidates(variants)
    report = MixedReport(
        budget=max_accuracy_drop, metric=evaluator.kind, reference_score=evaluator.reference_score,
        uniform_drop=uniform_drop, final_drop=final_drop, candidates=n_candidates, float_nodes=float_nodes,
        curve=curve, sensitivity=sensitivity, search_evaluations=search.evaluations, seconds=seconds,
        pinned=pinned, quantize=qreport, held_samples=evaluator.samples, met=final_drop <= max_accuracy_drop,
        cache_file=cache_file)
    qreport.calibration_samples = found.samples
    return final, report


def _count_candidates(variants: Variants) -> int:
    from onnxq.quantization.sensitivity import candidates

    return len(candidates(variants.float_model(), variants.target, exclude=variants.exclude))
