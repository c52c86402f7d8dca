"""The accuracy guard of ``onnxq quantize``: climb a recovery ladder until the result is faithful.

The plain command's result is judged by its self-check on held-back samples, with the measure
that fits each output (:mod:`onnxq.validation.output_kinds`): top-1 agreement of class scores,
sequence agreement of CTC-like outputs, SQNR of everything else. When it is below the floor, the
guard tries, in order and within ``time_limit_s``:

1. ``recovery``: the recovery passes (:mod:`onnxq.passes.recovery`): ``smooth-quant`` and
   ``correct-bias``, with ``cross-layer-equalization`` first when weights are per-tensor;
2. ``calibration``: the histogram methods that clip outliers (``percentile``, ``mse``), one
   calibration each (the ranges decide most of the error of a post-training INT8 model), with the
   recovery passes when they helped;
3. ``dynamic`` (targets with onnxruntime's dynamic kernels): INT8 MatMul / Gemm / LSTM / GRU
   weights with activation ranges taken at run time, the rest float (no calibrated range to
   collapse: sequence readers whose static activations lose the text keep it this way);
4. ``mixed``: the fewest nodes moved to float (:func:`~onnxq.quantization.mixed_precision.quantize_mixed`,
   sensitivity on the held-back samples) to a budget equivalent to the floor;
5. ``float``: the optimized float model, always faithful.

On a model above 1 ms, or one above 0.2 ms whose faithful plain result is below 0.8x, the
optimized float model is measured right after the plain rung: the
``optimize`` preset alone often gains much (a written-out HardSwish fused: 1.5x on a PicoDet
detector), and when it is at least as fast as the plain quantized result, no rung can beat it
(rungs only add float nodes or change ranges), so the ladder is skipped and float is the answer.
Every rung is printed with its figures, and the fastest result above the floor is kept. A
quantized result slower than float on a model above 1 ms (beyond the noise of interleaved
medians) loses to the optimized float model: the output is never slower than FP32 there. When no
quantized result reaches the floor, the optimized float model is measured on any model and written
unless it is slower than FP32: accuracy before speed. Only then (or with ``--no-optimize``) is a
result below the floor written: the most faithful quantized one, and the report says so
(``within_floor: false``). Rungs are judged on fidelity, which is deterministic; only when the
time limit cuts the mixed-precision analysis short (it gets what is left, at least a minute) can
two runs of a slow model differ.

Hand-written: NNCF's ``quantize_with_accuracy_control`` reverts layers by a ranking but neither
retries calibration nor weighs speed; onnxruntime has no guard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxq.calibration import CalibrationData
from onnxq.errors import first_line
from onnxq.framework.base import Diagnostic, Severity
from onnxq.quantization import placement
from onnxq.quantization.quantize import QuantizeReport, quantize
from onnxq.quantization.sensitivity import exact
from onnxq.runtime import release_memory
from onnxq.targets import Target, get_target
from onnxq.validation.self_check import SQNR_FLOOR_DB, TOP1_FLOOR, SelfCheckReport, self_check

logger = logging.getLogger(__name__)

#: Default time for the whole ladder (the plain rung always runs).
TIME_LIMIT_S = 300.0
#: Below this margin (``_score``: SQNR under 10 dB, agreement under 47 %) the calibration rungs are skipped.
FAR_BELOW = -0.5
#: Calibration methods tried after min/max, in order.
RECOVERY_METHODS = ("percentile", "mse")
#: Recovery passes of the first rung (cross-layer-equalization joins them for per-tensor weights).
RECOVERY_PASSES = ("smooth-quant", "correct-bias")
#: Time the mixed-precision analysis gets even when the ladder has used up the limit.
MIXED_MIN_S = 60.0
#: Float latency above which a quantized result must not be slower than float.
SLOWER_MATTERS_MS = 1.0
#: A speed-up below this is slower than float beyond the noise of interleaved medians.
SLOWER_THAN = 0.95
#: Below 1 ms a faithful plain result still loses to float when slower than this, on a model whose
#: float run takes at least TIMED_MS (shorter runs are mostly call overhead and timing noise).
CLEARLY_SLOWER = 0.8
TIMED_MS = 0.2
#: The optimized float model wins over a faithful quantized one only when faster by this factor
#: (their speed-ups come from separate interleaved runs; ties go to the smaller model).
FLOAT_MARGIN = 1.05
#: Share of the plain result's speed-up a mixed-precision result kept at best on the dev set (AVX2:
#: PP-OCR det 0.81, rec 0.67, PicoDet layout 0.68, each keeping 11-81 nodes float). When even that
#: share of the plain speed-up cannot beat the optimized float model by FLOAT_MARGIN, the search
#: is skipped: it could not be kept, and on the layout detector it took 220 s and 1.1 GB.
MIXED_KEEPS = 0.8
#: dB above the SQNR floor that mixed precision aims at (its cosine budget maps to SQNR only about).
MIXED_MARGIN_DB = 1.0
#: Speed-ups of float and a faithful quantized result closer than this factor are timed again head
#: to head (``HEAD_TO_HEAD_S`` of interleaved runs, at least ``HEAD_TO_HEAD_RUNS`` each).
CLOSE_CALL = 1.15
HEAD_TO_HEAD_S = 3.0
HEAD_TO_HEAD_RUNS = 15
#: The name of the optimized float model's rung.
FLOAT_RUNG = "float (optimized, no QDQ)"
#: The same rung on a model that already carries Q/DQ (a QAT export): those stay, nothing is added.
CARRIED_RUNG = "carried QDQ only (optimized, no QDQ added)"
DYNAMIC_RUNG = "dynamic (INT8 weights, activation ranges at run time)"


@dataclasses.dataclass
class Rung:
    """One result the guard measured."""

    name: str
    within_floor: bool
    fidelity: str
    speedup: float | None
    seconds: float
    note: str = ""

    samples: int = 0
    #: The ``quantize()`` arguments that made this result (static rungs only), for a rung built on it.
    recipe: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    def line(self) -> str:
        speed = f"{self.speedup:.2f}x" if self.speedup is not None else "speed not measured"
        verdict = "within the floor" if self.within_floor else "below the floor"
        on = f" on {self.samples} held-back sample(s)" if self.samples else ""
        return f"guard: {self.name}: {verdict} ({self.fidelity}{on}), {speed}, {self.seconds:.1f} s" + (
            f"; {self.note}" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "recipe"}


@dataclasses.dataclass
class GuardReport:
    rungs: list[Rung]
    chosen: str
    within_floor: bool
    time_limit_s: float

    def lines(self) -> list[str]:
        out = [r.line() for r in self.rungs]
        out.append(f"guard: kept '{self.chosen}'" + ("" if self.within_floor else
                   " -- NO RESULT REACHED THE FIDELITY FLOOR: check the accuracy before shipping this model"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"rungs": [r.to_json() for r in self.rungs], "chosen": self.chosen,
                "within_floor": self.within_floor, "time_limit_s": self.time_limit_s}


def within_floor(check: SelfCheckReport | None) -> bool:
    """Whether every output of a self-check is above its floor (no fidelity warning)."""
    if check is None:
        return True
    return not any("fidelity floor" in w or "differs in shape" in w for w in check.warnings)


def fidelity_summary(check: SelfCheckReport | None) -> str:
    if check is None or not check.outputs:
        return "not measured"
    parts = []
    for o in check.outputs:
        if o.mismatch:
            parts.append(f"{o.name}: shape mismatch")
        elif o.sequence_agreement is not None:
            parts.append(f"{o.name}: sequences {o.sequence_agreement:.1%}")
        elif o.top1_agreement is not None:
            parts.append(f"{o.name}: top-1 {o.top1_agreement:.1%}")
        else:
            parts.append(f"{o.name}: {'exact' if math.isinf(o.sqnr_db) and o.sqnr_db > 0 else f'{o.sqnr_db:.1f} dB'}")
    return ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")


def _score(check: SelfCheckReport | None) -> float:
    """Higher is more faithful: the worst output's margin over its floor, in floor units."""
    if check is None or not check.outputs:
        return 0.0
    margins = []
    for o in check.outputs:
        if o.mismatch:
            margins.append(-math.inf)
        elif o.sequence_agreement is not None:
            margins.append(o.sequence_agreement - TOP1_FLOOR)
        elif o.top1_agreement is not None:
            margins.append(o.top1_agreement - TOP1_FLOOR)
        else:
            margins.append(min(o.sqnr_db, 200.0) / SQNR_FLOOR_DB - 1.0)
    return min(margins)


#: Op types that keep recurrent layers out of dynamic INT8 (quantize's exclude patterns).
RECURRENT = ("LSTM", "GRU")


def _has_op(model: ir.Model, op_types: Sequence[str]) -> bool:
    return any(node.op_type in op_types for node in ir.traversal.RecursiveGraphIterator(model.graph))


def report_target(report: QuantizeReport) -> Any:
    from onnxq.targets import get_target

    return get_target(report.target, cpu=report.cpu) if report.target == "ort-cpu" else report.target


def _speedup(check: SelfCheckReport | None) -> float | None:
    return check.latency.speedup if check is not None and check.latency is not None else None


def mixed_can_win(plain: Rung, floating: Rung | None) -> bool:
    """Whether a mixed-precision result could beat the optimized float model (always, unmeasured)."""
    if floating is None or floating.speedup is None or plain.speedup is None:
        return True
    return plain.speedup * MIXED_KEEPS >= floating.speedup * FLOAT_MARGIN


def float_still_needed(rungs: Sequence[Rung], float_ms: float | None) -> bool:
    """Whether the optimized float model must be measured after the ladder (when it was not before).

    Yes when no quantized rung reached the floor (on a model too small for the speed rule, the
    optimized float model is faithful; it wins unless it is slower than FP32), and when the faithful
    ones are all clearly slower than float on a model timed above ``TIMED_MS`` (PP-OCR's 0.9 ms
    direction classifier on a VNNI Xeon: below the floor in its plain rung, faithful at 0.65x in
    its percentile rung, which was then written).
    """
    faithful = [r.speedup or 0.0 for r in rungs if r.within_floor]
    if not faithful:
        return True
    return max(faithful) < CLEARLY_SLOWER and float_ms is not None and float_ms >= TIMED_MS


def _float_ms(check: SelfCheckReport | None) -> float | None:
    return check.latency.float_ms if check is not None and check.latency is not None else None


def _mixed_budget(check: SelfCheckReport | None) -> float:
    """The accuracy drop (in the mixed-precision evaluator's units) that matches the floor."""
    if check is not None and check.outputs:
        first = check.outputs[0]
        if first.top1_agreement is not None or first.sequence_agreement is not None:
            return 1.0 - TOP1_FLOOR
    # NOTE: cosine similarity at SQNR s dB is about 1 - 0.5 * 10**(-s / 10) (0.995 at 20 dB), only
    # about: the search stops at the first set within its budget, so a budget set at the floor lands
    # on its edge (ddddocr's YOLOX detector on AVX2 kernels: drop 0.0049 of 0.005 -> 19.9 dB, below
    # the floor, so float at 1.01x). It aims MIXED_MARGIN_DB above the floor instead.
    return 0.5 * 10 ** (-(SQNR_FLOOR_DB + MIXED_MARGIN_DB) / 10)


def quantize_guarded(
    model: ir.Model,
    calibration: Any,
    *,
    time_limit_s: float = TIME_LIMIT_S,
    method: str = "minmax",
    method_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[ir.Model, QuantizeReport, GuardReport]:
    """``quantize()`` with the accuracy guard (see the module docstring); ``model`` is not modified.

    Args:
        model: The float model.
        calibration: Calibration samples in any ``quantize()`` form (read more than once).
        time_limit_s: Time for the ladder after the plain rung.
        method / method_options / options: As for :func:`~onnxq.quantization.quantize.quantize`;
            ``recovery`` passes the user chose run in every static rung, before the ladder's own.
    """
    from onnxq.quantization.quantize import SELF_CHECK_MAX_BYTES, _weight_bytes

    start = time.perf_counter()
    chosen = tuple(options.pop("recovery", None) or ())
    if _weight_bytes(model) > SELF_CHECK_MAX_BYTES:
        # NOTE: no self-check above this size (quantize() says why), so no fidelity to guard.
        result, report = quantize(model, calibration, method=method, method_options=method_options,
                                  recovery=chosen, **options)
        rung = Rung(f"plain ({method})", True, "not measured (model too large for the self-check)", None,
                    time.perf_counter() - start)
        return result, report, GuardReport([rung], rung.name, True, time_limit_s)
    # NOTE: each rung starts from a copy; relative external data must be read before copying.
    ir.external_data.load_to_model(model)
    original = ir.to_proto(model)
    data = CalibrationData.from_source(calibration) if calibration is not None else None
    if data is not None and not data.reiterable:
        data = data.materialize()

    def fresh() -> ir.Model:
        return ir.from_proto(original)

    carried = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in original.graph.node)
    float_name = CARRIED_RUNG if carried else FLOAT_RUNG
    float_output = ("the optimized model with only the QDQ it carried" if carried else "the optimized float model")

    rungs: list[Rung] = []
    results: list[tuple[Rung, ir.Model, QuantizeReport]] = []

    def record(name: str, result: ir.Model, report: QuantizeReport, began: float, note: str = "",
               recipe: dict[str, Any] | None = None) -> Rung:
        check = report.self_check
        if held and (check is None or check.samples != len(held)):
            # NOTE: every rung is judged on the plain rung's held-back samples (mixed precision's own
            # self-check runs on its own held set), so the rungs compare like with like.
            check = report.self_check = self_check(reference, result, held, target=report_target(report))
        rung = Rung(name, within_floor(check), fidelity_summary(check), _speedup(check),
                    time.perf_counter() - began, note, samples=check.samples if check is not None else 0,
                    recipe=recipe)
        rungs.append(rung)
        results.append((rung, result, report))
        # NOTE: only the results the choice can still fall on stay in memory (the most faithful, the
        # fastest faithful one); freed sessions go back to the system between rungs (peak RSS).
        # The optimized float model stays too: it is compared with the quantized results at the end.
        kept = [x for x in results if x[0].name == float_name]
        quantized = [x for x in results if x[0].name != float_name]
        faithful = [x for x in quantized if x[0].within_floor]
        if faithful:
            kept.append(max(faithful, key=lambda x: x[0].speedup or 0.0))
        if quantized:
            kept.append(max(quantized, key=lambda x: _score(x[2].self_check)))
        results[:] = list({id(x[0]): x for x in kept}.values())
        release_memory()
        logger.info(rung.line())
        return rung

    held: list[dict[str, Any]] = []
    reference = fresh()
    began = time.perf_counter()
    plain, plain_report = quantize(fresh(), data, method=method, method_options=method_options, recovery=chosen,
                                   **options)
    if data is not None and plain_report.holdout_samples:
        _, rest = data.split(holdout=plain_report.holdout_samples)
        held = [dict(f) for _, f in rest.feeds(reference)]
    first = record(f"plain ({method})", plain, plain_report, began,
                   recipe={"method": method, "method_options": method_options, "recovery": chosen})
    float_ms = _float_ms(plain_report.self_check)
    slow = (first.speedup is not None and first.speedup < SLOWER_THAN and float_ms is not None
            and float_ms > SLOWER_MATTERS_MS)

    def optimized_float() -> tuple[ir.Model, QuantizeReport]:
        return quantize(fresh(), data, method=method, method_options=method_options,
                        **{**options, "include": ("(?!)",), "self_check": False})

    def measure_float() -> Rung:
        began = time.perf_counter()
        return record(float_name, *optimized_float(), began)

    # NOTE: a target that runs quantized graphs only (the QNN HTP: a float node falls back to the
    # CPU) has no float alternative: neither the optimized float model nor mixed precision.
    target = options.get("target", "ort-cpu")
    profile = target if isinstance(target, Target) else get_target(target, cpu=options.get("cpu"))
    float_allowed = profile.float_nodes_run
    floating: Rung | None = None
    # NOTE: below 1 ms too when the faithful plain result is clearly slower than float (a 0.6 ms Keras
    # CNN at 0.55x): a quantized model that halves the speed is not what anyone asked for. (Below the
    # floor there, the ladder runs first; float is measured after it when nothing is faithful.)
    clearly_slower = (first.within_floor and first.speedup is not None and first.speedup < CLEARLY_SLOWER
                      and float_ms is not None and float_ms >= TIMED_MS)
    if (float_allowed and float_ms is not None and (float_ms > SLOWER_MATTERS_MS or clearly_slower)
            and options.get("optimize", True)):
        floating = measure_float()

    def quantized_ok() -> bool:
        return any(r.within_floor for r in rungs if r is not floating)

    def left() -> float:
        return time_limit_s - (time.perf_counter() - start)

    float_wins = (floating is not None and floating.speedup is not None and first.speedup is not None
                  and floating.speedup >= first.speedup)
    if float_wins and floating is not None:
        floating.note = (f"as fast as the plain quantized result ({floating.speedup:.2f}x vs "
                         f"{first.speedup:.2f}x): no rung can be faster, the ladder is skipped")
    recovery: tuple[str, ...] = ()
    extra_exclude: tuple[str, ...] = ()
    if not first.within_floor and not float_wins and data is not None and options.get("ranges") is None:
        passes = (("cross-layer-equalization",) if not plain_report.per_channel else ()) + RECOVERY_PASSES
        ladder: list[tuple[str, str, tuple[str, ...] | None, tuple[str, ...]]] = [
            (f"recovery ({', '.join(passes)})", method, passes, ())]
        if _has_op(plain, ("DynamicQuantizeLSTM", "DynamicQuantizeMatMul")):
            # NOTE: recurrent layers go to dynamic INT8 beside the QDQ graph, outside the mixed-precision
            # search: keeping them float is a rung of its own (CNN + LSTM sequence readers need it).
            ladder.append(("recurrent layers float", method, (), RECURRENT))
        if _score(plain_report.self_check) > FAR_BELOW:
            # NOTE: far below the floor (a collapse), other clipping does not bring it back (measured on
            # the dev set): the time goes to mixed precision instead.
            ladder += [(f"calibration ({m})", m, None, None) for m in RECOVERY_METHODS if m != method]
        if profile.wider_activations is not None and left() > 0:
            # NOTE: the same provider with 16-bit activations, before any float alternative: on the
            # HTP a float node would leave the NPU (fer_emotion A8W8 26.4 dB -> A16W8 32.9 dB).
            began = time.perf_counter()
            try:
                result, report = quantize(fresh(), data, method=method, method_options=method_options,
                                          recovery=chosen,
                                          **{**options, "target": profile.wider_activations, "wide": ()})
                record(f"16-bit activations ({profile.wider_activations})", result, report, began)
            except Exception as e:  # noqa: BLE001  # a rung that fails is reported; the ladder goes on
                rungs.append(Rung(f"16-bit activations ({profile.wider_activations})", False,
                                  f"failed: {first_line(e)}", None, time.perf_counter() - began))
        for name, rung_method, rung_passes, rung_exclude in ladder:
            if left() <= 0 or quantized_ok():
                break
            began = time.perf_counter()
            use = rung_passes if rung_passes is not None else recovery
            floats = rung_exclude if rung_exclude is not None else extra_exclude
            try:
                result, report = quantize(fresh(), data, method=rung_method,
                                          recovery=tuple(dict.fromkeys((*chosen, *use))),
                                          method_options=method_options if rung_method == method else None,
                                          **{**options, "exclude": [*options.get("exclude", ()), *floats]})
            except Exception as e:  # noqa: BLE001  # a rung that fails is reported; the ladder goes on
                rungs.append(Rung(name, False, f"failed: {first_line(e)}", None, time.perf_counter() - began))
                continue
            kept = [*use, *(["recurrent layers float"] if floats and rung_exclude is None else [])]
            recipe = {"method": rung_method, "recovery": tuple(dict.fromkeys((*chosen, *use))),
                      "method_options": method_options if rung_method == method else None,
                      "exclude": [*options.get("exclude", ()), *floats]}
            rung = record(name + (f" + {', '.join(kept)}" if rung_passes is None and kept else ""), result, report,
                          began, recipe=recipe)
            if _score(report.self_check) > _score(plain_report.self_check):
                # NOTE: the next rungs keep what helped
                if rung_passes:
                    recovery = rung_passes
                if rung_exclude:
                    extra_exclude = rung_exclude
    if (profile.dynamic_kernels and not first.within_floor and not float_wins and not quantized_ok()
            and data is not None and left() > 0 and not options.get("include") and options.get("ranges") is None):
        # NOTE: INT8 weights with activation ranges taken at run time: no calibrated range to clip or
        # collapse. It quantizes MatMul / Gemm / LSTM / GRU (not Conv), so a pure CNN skips it; a
        # CNN + LSTM captcha reader keeps its decisions this way (static INT8 18 dB, this 36.5 dB, 1.4x).
        began = time.perf_counter()
        try:
            result, report = quantize(fresh(), data, **{**options, "mode": "dynamic"})
            if any(key.startswith("quantize-dynamic.quantized_") and key != "quantize-dynamic.quantized_gather"
                   for key in report.stats):
                record(DYNAMIC_RUNG, result, report, began)
        except Exception as e:  # noqa: BLE001  # a rung that fails is reported; the ladder goes on
            rungs.append(Rung(DYNAMIC_RUNG, False, f"failed: {first_line(e)}", None, time.perf_counter() - began))
    mixed_cannot_win = not mixed_can_win(first, floating)
    if mixed_cannot_win and not float_wins and floating is not None and not quantized_ok():
        floating.note = (f"mixed precision skipped: it keeps at most {MIXED_KEEPS:.0%} of the plain speed-up "
                         f"({first.speedup:.2f}x), which cannot beat this ({floating.speedup:.2f}x)")
    if (float_allowed and not quantized_ok() and not float_wins and not mixed_cannot_win and data is not None
            and left() > 0 and not options.get("include")):
        began = time.perf_counter()
        try:
            from onnxq.quantization.mixed_precision import quantize_mixed

            best_method = max(results, key=lambda x: _score(x[2].self_check))[2].method or method
            keys = ("target", "per_channel", "cpu", "optimize", "self_check")
            # NOTE: the analysis gets what is left of the time limit, at least a minute (the
            # search after it is bounded by a few dozen evaluations).
            deadline = time.perf_counter() + max(left(), MIXED_MIN_S)
            result, mixed = quantize_mixed(fresh(), data, max_accuracy_drop=_mixed_budget(plain_report.self_check),
                                           method=best_method, progress=False, measure_latency=False,
                                           deadline=deadline,
                                           exclude=[*options.get("exclude", ()), *extra_exclude],
                                           **{k: v for k, v in options.items() if k in keys})
            floats = len(mixed.float_nodes)
            record(f"mixed ({floats} node(s) float, {best_method})", result, mixed.quantize, began,
                   note=f"{mixed.metric} drop {mixed.final_drop:.4f} on {mixed.held_samples} held samples")
        except Exception as e:  # noqa: BLE001
            rungs.append(Rung("mixed", False, f"failed: {first_line(e)}", None, time.perf_counter() - began))

    if (float_allowed and profile.name == "ort-cpu" and held and float_ms is not None and float_ms >= TIMED_MS
            and options.get("optimize", True) and not options.get("include") and left() > 0):
        base = max((x for x in results if x[0].within_floor and x[0].recipe is not None),
                   key=lambda x: x[0].speedup or 0.0, default=None)
        if base is not None:
            as_float = next((x[1] for x in results if x[0] is floating), None)
            began = time.perf_counter()
            try:
                placed = placement.measure(as_float if as_float is not None else optimized_float()[0], base[1],
                                           held[0])
                if placed.names:
                    recipe = {**(base[0].recipe or {})}
                    recipe["exclude"] = [*recipe.get("exclude", options.get("exclude", ())),
                                         *(exact(n) for n in placed.names)]
                    result, report = quantize(fresh(), data, **{**options, **recipe})
                    record(f"{base[0].name} + measured placement ({len(placed.names)} node(s) float)", result,
                           report, began, note=placed.summary(), recipe=recipe)
                else:
                    base[0].note = "; ".join(x for x in (base[0].note, f"measured placement: {placed.summary()}") if x)
            except Exception as e:  # noqa: BLE001  # a rung that fails is reported; the guard goes on
                rungs.append(Rung("measured placement", False, f"failed: {first_line(e)}", None,
                                  time.perf_counter() - began))
    if (float_allowed and floating is None and float_still_needed(rungs, float_ms)
            and options.get("optimize", True) and not options.get("include")):
        floating = measure_float()
    chosen, rival = choose(results, floating, first)
    if held and float_ms is not None and float_ms > SLOWER_MATTERS_MS:
        chosen, rival = settle_close_call(chosen, rival, results, floating, first, held[0])
    rung, result, report = chosen
    if rung is floating and rival is not None:
        why = (f"{float_output} ({(rung.speedup or 0.0):.2f}x) is faster than the "
               f"{'fastest faithful' if rival.within_floor else 'most faithful'} quantized result "
               f"({rival.name}: {(rival.speedup or 0.0):.2f}x)")
        if "head to head" in rival.note:
            why += f"; {rival.note.split('; ')[-1]}"
        report.diagnostics.append(Diagnostic(
            f"quantization did not pay on this CPU ({why}): the output is {float_output}",
            Severity.WARNING))
    elif (rung.speedup is not None and rung.speedup < SLOWER_THAN and float_ms is not None
            and float_ms > SLOWER_MATTERS_MS) or (slow and not quantized_ok()):
        # NOTE: never slower than float above 1 ms: the optimized float model is the answer then.
        began = time.perf_counter()
        result, report = optimized_float()
        why = (f"every faithful quantized result was slower than float ({rung.speedup:.2f}x)"
               if rung.speedup is not None else "quantized results were slower than float")
        rung = Rung(float_name, True, "float", 1.0, time.perf_counter() - began, why)
        rungs.append(rung)
        report.diagnostics.append(Diagnostic(
            f"quantization did not pay on this CPU ({why}): the output is {float_output}",
            Severity.WARNING))
    if report is not plain_report:
        # NOTE: every rung is judged on the plain rung's held-back samples (``record``); the report
        # says so, not what the kept rung's own call split (0 for float, mixed precision's own).
        report.calibration_samples = plain_report.calibration_samples
        report.holdout_samples = plain_report.holdout_samples
    guard = GuardReport(rungs, rung.name, rung.within_floor, time_limit_s)
    return result, report, guard


def choose(results: Sequence[tuple[Rung, Any, Any]], floating: Rung | None,
           plain: Rung | None = None) -> tuple[tuple[Rung, Any, Any], Rung | None]:
    """The result the guard writes, and the quantized result it was weighed against.

    The fastest faithful quantized result, unless the optimized float model (``floating``) is
    faster by more than ``FLOAT_MARGIN``. A result the ladder recovered (not ``plain``) sits near
    the floor on a small held-back set (measured: a recognizer's mixed result agreed on 16 of 16
    held-back lines and on 82 of 100 others), so it must beat float by that margin instead. With
    no faithful quantized result, accuracy comes first:
    the optimized float model, unless it is slower than FP32 (``SLOWER_THAN``: then nothing
    faithful pays, and the most faithful quantized result is written and flagged); a quantized
    model that loses the task is not worth its speed.
    """
    def speed(x: tuple[Rung, Any, Any]) -> float:
        return x[0].speedup if x[0].speedup is not None else 0.0

    as_float = next((x for x in results if x[0] is floating), None)
    quantized = [x for x in results if x[0] is not floating]
    faithful = [x for x in quantized if x[0].within_floor]
    if not quantized:
        assert as_float is not None, "the guard measured nothing"
        return as_float, None
    if faithful:
        best = max(faithful, key=speed)
        if plain is not None and best[0] is not plain:
            wins = as_float is not None and speed(best) <= speed(as_float) * FLOAT_MARGIN
        else:
            wins = as_float is not None and speed(as_float) > speed(best) * FLOAT_MARGIN
    else:
        best = max(quantized, key=lambda x: _score(x[2].self_check))
        wins = as_float is not None and (as_float[0].speedup is None or speed(as_float) >= SLOWER_THAN)
    return (as_float if wins and as_float is not None else best), best[0]


def settle_close_call(chosen: tuple[Rung, Any, Any], rival: Rung | None, results: Sequence[tuple[Rung, Any, Any]],
                      floating: Rung | None, plain: Rung | None, feed: Mapping[str, Any]) -> tuple[
                          tuple[Rung, Any, Any], Rung | None]:
    """Float against the fastest faithful quantized result, timed head to head when their speed-ups
    (each from its own interleaved run against FP32) are within ``CLOSE_CALL`` of each other.

    Two separate timings of a ~1.0x choice flip from run to run on a shared machine (basic_pitch:
    1.06x in the guard, 0.93x in a benchmark); one interleaved run of the two finalists decides
    with the same margins as :func:`choose`. Deterministic choices stay as they were: only the
    timing of a close call is redone.
    """
    from onnxq.runtime import select_inputs
    from onnxq.validation.bench import interleaved_times, session

    as_float = next((x for x in results if x[0] is floating), None)
    quantized = chosen if chosen[0] is not floating else next((x for x in results if x[0] is rival), None)
    if as_float is None or quantized is None or not quantized[0].within_floor:
        return chosen, rival
    q_speed, f_speed = quantized[0].speedup, as_float[0].speedup
    if not q_speed or not f_speed or not 1 / CLOSE_CALL <= q_speed / f_speed <= CLOSE_CALL:
        return chosen, rival
    sessions = [session(as_float[1]), session(quantized[1])]
    feeds = [select_inputs(m, feed) for m in (as_float[1], quantized[1])]
    times = interleaved_times([lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds, strict=True)],
                              warmup=3, min_runs=HEAD_TO_HEAD_RUNS, max_runs=200, budget_s=HEAD_TO_HEAD_S)
    del sessions
    ratio = float(sorted(times[0])[len(times[0]) // 2] / sorted(times[1])[len(times[1]) // 2])
    recovered = plain is not None and quantized[0] is not plain
    float_wins = ratio <= FLOAT_MARGIN if recovered else ratio < 1 / FLOAT_MARGIN
    versus = "the carried-QDQ model" if as_float[0].name == CARRIED_RUNG else "the optimized float model"
    note = (f"head to head with {versus}, interleaved ({len(times[0])} runs each): "
            f"{ratio:.2f}x its speed")
    quantized[0].note = "; ".join(x for x in (quantized[0].note, note) if x)
    if float_wins:
        return as_float, quantized[0]
    return quantized, rival


def guard_applies(mode: str, self_check: bool, include: Sequence[str]) -> bool:
    """The guard needs the self-check's fidelity on held-back samples (static mode)."""
    return mode == "static" and self_check and not include
