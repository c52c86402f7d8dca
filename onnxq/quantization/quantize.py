"""``quantize()``: the INT8 driver behind ``onnxq quantize``.

It strings the building blocks together in the order the practice asks for and
reports every decision: optimize (fusions before quantizing) -> opset >= 13 for
per-channel weights -> calibrate (or reuse a ranges file) -> the target's static
QDQ pipeline (or dynamic quantization) -> self-check in onnxruntime (which QDQ
groups really fused, latency against the float model, fidelity on held-back
samples), removing QDQ groups that did not fuse because they only add time.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.calibration import CalibrationData, calibrate
from onnxq.calibration.ranges import Ranges, model_fingerprint
from onnxq.errors import OptionError, UserError
from onnxq.framework.base import Diagnostic, Severity
from onnxq.framework.context import PassContext
from onnxq.framework.pipeline import Pipeline, apply
from onnxq.framework.registry import PassRegistry
from onnxq.ir.interop import copy_model
from onnxq.passes.quantization._common import PASS_METADATA_KEY
from onnxq.runtime import release_memory
from onnxq.targets import Target, get_target

logger = logging.getLogger(__name__)

MODES = ("static", "dynamic", "weight-only")
#: Weight-only mode's output per target: MatMulNBits for onnxruntime, blocked 4-bit DequantizeLinear
#: before the MatMul (opset 21) for TensorRT 10's weight-only INT4 (the QDQ form it reads).
WEIGHT_ONLY_FORMATS = {"ort-cpu": "nbits", "tensorrt": "qdq"}
METHODS = ("minmax", "moving-average", "percentile", "entropy", "mse")
#: CLI spelling -> calibration's method name.
_METHOD_NAMES = {"moving-average": "moving_average"}
#: Lowest opset at which DequantizeLinear takes a per-channel ``axis`` (ORT_CPU_QDQ.md).
PER_CHANNEL_OPSET = 13
#: Held-back samples the self-check compares on (never used for calibration), at most a quarter of
#: the samples: 8 could not tell 97 % agreement from 88 %.
HOLDOUT = 32
#: Above this many bytes of weights the self-check is skipped: it holds the float and the
#: quantized model in memory at once (use ``onnxq compare`` / ``onnxq bench`` on the files).
SELF_CHECK_MAX_BYTES = 1 << 30
#: Weights built by constant subgraphs (exporters slice and concatenate LSTM/GRU gates) are
#: folded up to this many elements before quantizing, so the quantizers see initializers.
FOLD_WEIGHTS_LIMIT = 1 << 24


@dataclasses.dataclass
class QuantizeReport:
    """What ``quantize`` did and measured; printed by the CLI, written as JSON with ``--json``."""

    target: str
    mode: str
    method: str | None
    per_channel: bool
    cpu: str | None = None
    cpu_note: str | None = None
    opset: tuple[int, int] | None = None
    calibration_samples: int = 0
    holdout_samples: int = 0
    ranges_from: str | None = None
    stats: dict[str, int] = dataclasses.field(default_factory=dict)
    ops_before: dict[str, int] = dataclasses.field(default_factory=dict)
    ops_after: dict[str, int] = dataclasses.field(default_factory=dict)
    diagnostics: list[Diagnostic] = dataclasses.field(default_factory=list)
    self_check: Any = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def warnings(self) -> list[Diagnostic]:
        """Warnings of the passes and of the self-check."""
        found = [*self.diagnostics, *(self.self_check.diagnostics() if self.self_check is not None else [])]
        return [d for d in found if d.severity is not Severity.INFO]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "method": self.method,
            "per_channel": self.per_channel,
            "cpu": self.cpu,
            "cpu_note": self.cpu_note,
            "opset": list(self.opset) if self.opset else None,
            "calibration_samples": self.calibration_samples,
            "holdout_samples": self.holdout_samples,
            "ranges_from": self.ranges_from,
            "stats": dict(self.stats),
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
            "diagnostics": [str(d) for d in self.diagnostics],
            "self_check": None if self.self_check is None else self.self_check.to_json(),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def quantize(
    model: ir.Model,
    calibration: Any = None,
    *,
    target: str | Target = "ort-cpu",
    mode: str = "static",
    method: str = "minmax",
    per_channel: bool = True,
    cpu: str | None = None,
    exclude: Sequence[str] = (),
    include: Sequence[str] = (),
    ranges: Ranges | str | None = None,
    save_ranges: str | None = None,
    optimize: bool = True,
    self_check: bool = True,
    reference: ir.Model | str | None = None,
    method_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    overrides: Mapping[str, str] | str | None = None,
    recovery: Sequence[str] = (),
    wide: Sequence[str] = (),
    algo: str = "rtn",
    block_size: int = 32,
    eight_bit: Sequence[str] = (),
    embeddings: bool = False,
) -> tuple[ir.Model, QuantizeReport]:
    """Quantizes ``model`` in place to INT8 for ``target`` and returns it with a report.

    Args:
        model: The float model (changed in place).
        calibration: Calibration samples (static mode): a path (folder of .npz, or one .npz
            with a leading sample axis), an iterable of feed dicts, or an onnxruntime
            ``CalibrationDataReader``. Dynamic mode uses them only for the self-check.
        target: ``"ort-cpu"`` (default), ``"tensorrt"``, or a ``Target``.
        mode: ``"static"`` (QDQ activations from calibration) or ``"dynamic"``.
        method: Calibration method: minmax, moving-average, percentile, entropy, mse.
        per_channel: Per-channel weights on the kernel's output-channel axis.
        cpu: ``"avx2"``, ``"vnni"`` or ``"arm64"``; default: read from this machine.
        exclude / include: Node names, op types or regular expressions to leave in float / to
            restrict quantization to.
        ranges: Ranges (or a ranges JSON file) to reuse instead of calibrating.
        save_ranges: Write the calibrated ranges to this JSON file.
        optimize: Run the ``optimize`` preset (cleanup + fusions) first.
        self_check: Run the quantized model in onnxruntime and report fusion, latency and
            fidelity; remove QDQ groups that did not fuse.
        reference: The float model the self-check compares against (default: a copy of
            ``model`` taken before any change).
        method_options: Extra options of the calibration method (``percentile=99.99``...).
        progress: Show progress bars (calibration samples).
        overrides: Node -> ``"int8"`` | ``"float"`` pins, or an overrides JSON file
            (``onnxq.quantization.mixed_precision``): float pins join ``exclude``, int8 pins are
            removed from it (exact names); names are checked after the optimize preset.
        recovery: Accuracy-recovery passes run on the optimized float model before calibration
            (static mode), with the calibration samples: ``cross-layer-equalization``,
            ``smooth-quant``, ``correct-bias`` (:mod:`onnxq.passes.recovery`).
        algo / block_size: ``weight-only`` mode: 4-bit MatMul weights by ``rtn``, ``hqq``, ``gptq`` or
            ``awq`` (the last two calibrated: ``calibration`` is required) in blocks of ``block_size`` along K;
            ``eight_bit``: MatMuls (patterns, ``ends``: the first and the last, or ``auto[:SHARE]``) given 8-bit
            blocks; ``embeddings``: Gather tables to 4-bit blocks too (``quantize-weights-int4``).
        wide: Node names, op types or regular expressions whose QDQ node units get 16-bit
            activations (A16W8) in an 8-bit graph, with converts at the borders
            (``widen-activations``); only for targets that have a 16-bit profile (qnn).
    """
    if mode not in MODES:
        raise OptionError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    method = method.replace("_", "-")
    if method not in METHODS:
        raise OptionError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    refuse_integer_model(model)
    profile = target if isinstance(target, Target) else get_target(target, cpu=cpu)
    if mode == "weight-only" and profile.name not in WEIGHT_ONLY_FORMATS:
        raise OptionError(f"--mode weight-only writes com.microsoft.MatMulNBits (--target ort-cpu) or blocked "
                          f"4-bit DequantizeLinear (--target tensorrt); {profile.name} runs neither")
    if mode == "weight-only" and algo == "hqq" and WEIGHT_ONLY_FORMATS[profile.name] != "nbits":
        raise OptionError("--algo hqq writes float zero points, which only MatMulNBits takes: --target ort-cpu")
    if embeddings and mode != "weight-only":
        raise OptionError("--int4-embeddings belongs to --mode weight-only")
    if eight_bit and mode != "weight-only":
        raise OptionError("--bits8 chooses 8-bit blocks in --mode weight-only")
    if mode == "weight-only" and algo in ("gptq", "awq") and calibration is None:
        raise OptionError(f"--algo {algo} is calibrated: give samples with --calib PATH")
    if wide and (profile.wider_activations is None or mode != "static"):
        raise OptionError(f"16-bit activations per layer (--a16) need static mode and a target with a 16-bit "
                          f"profile (qnn), not {profile.name}" + (f" in {mode} mode" if mode != "static" else ""))
    report = QuantizeReport(
        target=profile.name,
        mode=mode,
        method=method if mode == "static" else None,
        per_channel=per_channel,
        cpu=getattr(profile, "cpu", None),
        cpu_note=getattr(profile, "cpu_note", None),
    )
    report.ops_before = _op_histogram(model)
    carried = report.ops_before.get("QuantizeLinear", 0) + report.ops_before.get("DequantizeLinear", 0)
    if carried and not any(n.metadata_props.get(PASS_METADATA_KEY) for n in model.graph if n.op_type == "QuantizeLinear"):
        report.diagnostics.append(Diagnostic(
            f"the model already carries {report.ops_before.get('QuantizeLinear', 0)} QuantizeLinear and "
            f"{report.ops_before.get('DequantizeLinear', 0)} DequantizeLinear (a QAT export or another tool's "
            "output): their scales are kept as they are (int8 activations move to uint8 with the same values "
            "where the target runs uint8), only what they leave float is quantized",
            Severity.WARNING))
    if _weight_bytes(model) <= SELF_CHECK_MAX_BYTES:
        # NOTE: the sessions below are built from serialized bytes, where a relative external-data
        # path would resolve against the working directory, not the model's folder; weights of this
        # size are read into memory once instead.
        ir.external_data.load_to_model(model)
    if self_check and reference is None and _weight_bytes(model) > SELF_CHECK_MAX_BYTES:
        self_check = False
        report.diagnostics.append(Diagnostic(
            f"self-check skipped: {_weight_bytes(model) / 2**30:.1f} GiB of weights would be held twice in "
            "memory; check the output with 'onnxq compare' and 'onnxq bench'", Severity.WARNING))
    if self_check and reference is None:
        reference = copy_model(model)
    elif isinstance(reference, str):
        from onnxq.ir.io import load_model

        reference = load_model(reference)
    clock = _Clock(report.seconds)

    if profile.static_shapes:
        _fix_input_shapes(model, calibration, profile, report)
    with clock("optimize"):
        _prepare(model, report, optimize=optimize, per_channel=per_channel, target=profile)
    if carried and mode == "static":
        from onnxq.passes.quantization import CompleteCarriedQDQ, LegalizeQDQ

        with clock("optimize"):
            _run(model, Pipeline([CompleteCarriedQDQ(), LegalizeQDQ()]), [profile], report)
    if overrides is not None:
        from onnxq.quantization import mixed_precision as mp

        where = overrides if isinstance(overrides, str) else "overrides"
        pins = mp.load_overrides(overrides) if isinstance(overrides, str) else mp.parse_overrides(overrides)
        mp.check_override_nodes(model, pins, where=where)
        exclude = mp.overrides_patterns(pins, exclude)

    data = held = None
    if calibration is not None:
        data = CalibrationData.from_source(calibration)
        total = data.length
        holdout = min(HOLDOUT, (total or 0) // 4) if mode == "static" else min(HOLDOUT, total or HOLDOUT)
        if self_check and holdout > 0:
            data, held = data.split(holdout=holdout) if mode == "static" else (data, data)
            report.holdout_samples = holdout if mode == "static" else 0
    if optimize and held is not None and isinstance(reference, ir.Model):
        with clock("optimize"):
            model = _check_optimized(model, reference, held, profile, report, per_channel=per_channel)
    if mode == "static" and _lowers_hardswish(profile) and (
            _has_op(model, "HardSwish") or ("HardSigmoid" in profile.lowered_ops and _has_op(model, "HardSigmoid"))):
        with clock("optimize"):
            _lower_hardswish(model, profile, report, include=include, exclude=exclude)
    if mode == "static" and recovery:
        with clock("recover"):
            _recover(model, recovery, profile, data, report)
        # NOTE: the recovery passes' sessions and activations are gone; their heap pages go back to
        # the system before calibration, the peak of the run (800x608 detector: 1001 -> 860 MiB).
        release_memory()
    if mode == "static":
        with clock("calibrate"):
            found = _ranges(model, profile, data, ranges=ranges, method=method,
                            options=method_options or {}, progress=progress, report=report,
                            exclude=exclude, include=include, per_channel=report.per_channel)
        if save_ranges:
            found.save(save_ranges)
        with clock("quantize"):
            from onnxq.passes.quantization import static_pipeline

            pipeline = static_pipeline(profile, per_channel=report.per_channel, exclude=tuple(exclude),
                                       include=tuple(include))
            _run(model, pipeline, [profile, found], report)
            if wide:
                _widen(model, profile, wide, report)
            extra = tuple(op for op in ("LSTM", "Gather") if _has_op(model, op))
            if profile.name == "ort-cpu" and not include and extra:
                # NOTE: QDQ has no LSTM kernel (ORT's DynamicQuantizeLSTM is the integer path for it),
                # and a float embedding table would stay the largest tensor of an NLP model: both
                # take their weight-only / dynamic form.
                from onnxq.passes.quantization.quantize_dynamic import QuantizeDynamic

                _run(model, Pipeline([QuantizeDynamic(per_channel=report.per_channel, ops=extra,
                                                      exclude=tuple(exclude), small_tables=False)]),
                     [profile], report)
            _report_float_bodies(model, profile, report)
    elif mode == "weight-only":
        with clock("quantize"):
            from onnxq.passes.quantization import QuantizeWeightsInt4

            form = WEIGHT_ONLY_FORMATS[profile.name]
            if form == "qdq" and model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) < 21:
                # NOTE: blocked DequantizeLinear and 4-bit types arrive at opset 21
                _run(model, Pipeline([PassRegistry.default().create("convert-opset", {"opset": "21"})]),
                     [profile], report)
            _run(model, Pipeline([QuantizeWeightsInt4(algo=algo, block_size=block_size, include=tuple(include),
                                                      exclude=tuple(exclude), eight_bit=tuple(eight_bit),
                                                      format=form, embeddings=embeddings)]),
                 [profile, *([data] if data is not None else [])], report)
            if not (report.stats.get("quantize-weights-int4.matmuls_int4")
                    or report.stats.get("quantize-weights-int4.gathers_int4")):
                report.diagnostics.append(Diagnostic(
                    "weight-only mode quantized nothing: it covers MatMul with a constant 2-D weight "
                    "(transformers, LLMs)", Severity.WARNING))
    else:
        with clock("quantize"):
            from onnxq.passes.quantization.quantize_dynamic import QuantizeDynamic

            pipeline = Pipeline([QuantizeDynamic(per_channel=report.per_channel, include=tuple(include),
                                                 exclude=tuple(exclude)),
                                 PassRegistry.default().create("eliminate-dead-code")])
            _run(model, pipeline, [profile], report)
            if not any(key.startswith("quantize-dynamic.quantized_") for key in report.stats):
                report.diagnostics.append(Diagnostic(
                    "dynamic mode quantized nothing: it covers MatMul, Gemm, LSTM, GRU and embeddings "
                    "(Conv only with quantize-dynamic{conv=true}, slow on x86); for convolutional models "
                    "use static mode (--calib PATH)", Severity.WARNING))

    if self_check:
        with clock("self-check"):
            _self_check(model, reference, held, profile, report, keep_unfused=bool(include))
    report.ops_after = _op_histogram(model)
    return model, report


# --- steps -----------------------------------------------------------------------------
#: Samples the optimized float graph is checked on against the original before calibrating.
OPTIMIZE_CHECK_SAMPLES = 4
#: Float tolerance of that check: relative, and absolute as a share of the output's largest value.
OPTIMIZE_RTOL = 1e-3
OPTIMIZE_ATOL = 1e-4


def _float_mismatch(reference: ir.Model, model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> str | None:
    """The first output (shape, dtype or value) where ``model`` differs from ``reference``, or None."""
    from onnxq import runtime

    for feed in feeds:
        want = runtime.run(reference, feed)
        got = runtime.run(model, feed)
        problems = runtime.compare(want, got, rtol=OPTIMIZE_RTOL, atol=OPTIMIZE_ATOL * _largest(want))
        if problems:
            return str(problems[0])
    return None


def _check_optimized(model: ir.Model, reference: ir.Model, held: CalibrationData, target: Target,
                     report: QuantizeReport, *, per_channel: bool) -> ir.Model:
    """The optimized float graph against the original on held-back samples, before calibrating.

    On a difference beyond float tolerance the culprit pass is found (the optimize preset again on
    a copy, with a numeric check after every pass), the model is optimized again without it, and a
    warning names it.
    """
    from onnxq import runtime
    from onnxq.errors import NumericMismatchError
    from onnxq.framework.instrumentation import NumericCheckEach

    feeds = [dict(f) for _, f in itertools.islice(held.feeds(reference), OPTIMIZE_CHECK_SAMPLES)]
    if not feeds:
        return model
    problem = _float_mismatch(reference, model, feeds)
    skipped: set[str] = set()
    while problem is not None:
        culprit = None
        for feed in feeds:  # NOTE: the first sample that shows the difference names the pass
            check = NumericCheckEach(feed, rtol=OPTIMIZE_RTOL,
                                     atol=OPTIMIZE_ATOL * _largest(runtime.run(reference, feed)))
            trial = copy_model(reference)
            try:
                _prepare(trial, QuantizeReport(target=target.name, mode="static", method=None,
                                               per_channel=per_channel), optimize=True, per_channel=per_channel,
                         target=target, skip=frozenset(skipped), instrumentations=[check])
            except NumericMismatchError as e:
                culprit = e.pass_name
                break
        if culprit is None or culprit in skipped:
            report.diagnostics.append(Diagnostic(
                f"the optimized float model differs from the original ({problem}) and no single pass is to blame; "
                "quantizing without --optimize would avoid it", Severity.WARNING))
            return model
        skipped.add(culprit)
        report.diagnostics.append(Diagnostic(
            f"optimize: pass '{culprit}' changed the float model's outputs ({problem}); continuing without it",
            Severity.WARNING))
        model = copy_model(reference)
        fresh = QuantizeReport(target=target.name, mode=report.mode, method=report.method, per_channel=per_channel)
        _prepare(model, fresh, optimize=True, per_channel=per_channel, target=target, skip=frozenset(skipped))
        report.stats = fresh.stats
        report.per_channel, report.opset = fresh.per_channel, fresh.opset
        report.stats["optimize.passes_skipped"] = len(skipped)
        problem = _float_mismatch(reference, model, feeds)
    return model


def _largest(outputs: Mapping[str, np.ndarray]) -> float:
    """The largest magnitude over the float outputs (the absolute tolerance's unit)."""
    return max((float(np.max(np.abs(w))) for w in outputs.values()
                if np.asarray(w).dtype.kind == "f" and np.size(w)), default=1.0)


def _prepare(model: ir.Model, report: QuantizeReport, *, optimize: bool, per_channel: bool,
             target: Target, skip: frozenset[str] = frozenset(),
             instrumentations: Sequence[Any] = ()) -> None:
    """Optimizes the float graph (without the passes in ``skip``) and lifts the opset for per-channel weights."""
    from onnxq.passes.fusion import optimize_pipeline

    registry = PassRegistry.default()
    # NOTE: the fusions use the target only to pick its GELU form.
    fusion_target = target.gelu_form
    fold = registry.create("fold-constants", {"input_size_limit": str(FOLD_WEIGHTS_LIMIT),
                                              "output_size_limit": str(FOLD_WEIGHTS_LIMIT)})
    if _weight_bytes(model) > SELF_CHECK_MAX_BYTES:
        fold = registry.create("infer-shapes")  # NOTE: keep large models lazy; folding reads weights
    preset = optimize_pipeline(fusion_target)
    if skip:
        from onnxq.passes.fusion import OPTIMIZE_MAX_ITERATIONS

        preset = Pipeline([p for p in preset.passes if p.name not in skip], fixpoint=True,
                          max_iterations=OPTIMIZE_MAX_ITERATIONS)
        fold = fold if fold.name not in skip else registry.create("infer-shapes")
    prepare = [fold, preset] if optimize else [registry.create("infer-shapes")]
    _run(model, Pipeline(prepare), [target], report, instrumentations=instrumentations)
    opset = model.opset_imports.get("", 0)
    if per_channel and opset < PER_CHANNEL_OPSET:
        try:
            _run(model, Pipeline([registry.create("convert-opset", {"opset": str(PER_CHANNEL_OPSET)})]),
                 [target], report)
            report.diagnostics.append(Diagnostic(
                f"opset {opset} -> {PER_CHANNEL_OPSET} so weights can be per-channel"))
        except UserError as e:
            report.per_channel = False
            report.diagnostics.append(Diagnostic(
                f"opset {opset} cannot be converted to {PER_CHANNEL_OPSET} ({e}); weights per-tensor",
                Severity.WARNING))
    lifted = model.opset_imports.get("", 0)
    if lifted < target.min_qdq_opset:
        # NOTE: the target's Q/DQ types need a newer opset (16-bit activations: 21).
        _run(model, Pipeline([registry.create("convert-opset", {"opset": str(target.min_qdq_opset)})]),
             [target], report)
        report.diagnostics.append(Diagnostic(
            f"opset {lifted} -> {target.min_qdq_opset}: {target.name}'s QuantizeLinear types need it"))
    report.opset = (opset, model.opset_imports.get("", 0))


def _fix_input_shapes(model: ir.Model, calibration: Any, target: Target, report: QuantizeReport) -> None:
    """Dynamic input dims fixed to the first calibration sample's shapes (the target runs static shapes only).

    Raises:
        OptionError: a dynamic input and no calibration samples to take its shape from.
    """
    dynamic = [v for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]
    if not dynamic:
        return
    if calibration is None:
        raise OptionError(f"--target {target.name} runs static shapes only and input '{dynamic[0].name}' is "
                          f"dynamic ({_shape_text(dynamic[0])}); give --calib samples to take the shapes from")
    _, feed = next(iter(CalibrationData.from_source(calibration).feeds(model)))
    for value in dynamic:
        if value.name not in feed:
            continue
        shape = [int(d) for d in np.shape(feed[value.name])]
        value.shape = ir.Shape(shape)
        report.diagnostics.append(Diagnostic(
            f"input '{value.name}' fixed to {shape} (the first calibration sample's): "
            f"{target.name} runs static shapes only"))


def _shape_text(value: ir.Value) -> str:
    return "no shape" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"


def _lowers_hardswish(target: Target) -> bool:
    """The target runs HardSwish in float but Add and Mul on integer kernels, and absorbs Clip."""
    return ("HardSwish" in target.float_ops and {"Add", "Mul"} <= set(target.integer_ops)
            and "Clip" in target.absorbed_ops)


def _widen(model: ir.Model, target: Target, wide: Sequence[str], report: QuantizeReport) -> None:
    """The ``wide`` node units to 16-bit activations (opset 21 first, for 16-bit Q/DQ)."""
    from onnxq.passes.quantization import WidenActivations

    wider = get_target(target.wider_activations) if target.wider_activations else target
    opset = model.opset_imports.get("", 0)
    if opset < wider.min_qdq_opset:
        _run(model, Pipeline([PassRegistry.default().create("convert-opset", {"opset": str(wider.min_qdq_opset)})]),
             [target], report)
        report.diagnostics.append(Diagnostic(f"opset {opset} -> {wider.min_qdq_opset}: 16-bit QuantizeLinear needs it"))
    before = report.stats.get("widen-activations.nodes_widened", 0)
    _run(model, Pipeline([WidenActivations(include=tuple(wide))]), [target], report)
    if report.stats.get("widen-activations.nodes_widened", 0) == before:
        report.diagnostics.append(Diagnostic(
            f"--a16 {', '.join(wide)}: no quantized node unit matched; the graph stays 8-bit", Severity.WARNING))


def _lower_hardswish(model: ir.Model, target: Target, report: QuantizeReport, *,
                     include: Sequence[str], exclude: Sequence[str]) -> None:
    """HardSwish nodes that will be quantized -> Add / Clip / Mul, the 1/6 folded into the Convs after them."""
    from onnxq.passes.fusion.fold_affine_into_conv import FoldAffineIntoConv
    from onnxq.passes.quantization.lower_hardswish import LowerHardSwish

    # NOTE: shapes of the new values are inferred again (calibration sizes its runs by them).
    _run(model, Pipeline([LowerHardSwish(include=tuple(include), exclude=tuple(exclude),
                                         hardsigmoid="HardSigmoid" in target.lowered_ops),
                          FoldAffineIntoConv(), PassRegistry.default().create("infer-shapes")]), [target], report)


def _recover(model: ir.Model, names: Sequence[str], target: Target, data: CalibrationData | None,
             report: QuantizeReport) -> None:
    """Runs the recovery passes ``names`` with the target and the calibration samples."""
    from onnxq.passes.recovery import PASSES

    known = {cls.name: cls for cls in PASSES}
    passes = []
    for name in names:
        cls = known.get(name)
        if cls is None:
            raise OptionError(f"unknown recovery pass {name!r}; choose from {', '.join(sorted(known))}")
        fields = {f.name for f in dataclasses.fields(cls.Options)}
        passes.append(cls(**({"per_channel": report.per_channel} if "per_channel" in fields else {})))
    if data is None and any(CalibrationData in cls.needs for cls in map(type, passes)):
        raise OptionError("recovery passes need calibration samples (--calib PATH)")
    _run(model, Pipeline(passes), [target, *([data] if data is not None else [])], report)


def _ranges(model: ir.Model, target: Target, data: CalibrationData | None, *, ranges: Ranges | str | None,
            method: str, options: Mapping[str, Any], progress: bool, report: QuantizeReport,
            exclude: Sequence[str], include: Sequence[str], per_channel: bool) -> Ranges:
    from onnxq.passes.quantization import tensors_to_calibrate

    fingerprint = model_fingerprint(model)
    if ranges is not None:
        found = ranges if isinstance(ranges, Ranges) else Ranges.load(ranges, fingerprint=fingerprint)
        report.ranges_from = "given" if isinstance(ranges, Ranges) else str(ranges)
        report.method = found.method
        return found
    if data is None:
        raise OptionError("static quantization needs calibration data (--calib PATH) or --ranges FILE")
    tensors = tensors_to_calibrate(model, target, exclude=tuple(exclude), include=tuple(include))
    found = calibrate(model, data, method=_METHOD_NAMES.get(method, method), tensors=tensors, progress=progress,
                      **dict(options))
    report.calibration_samples = found.samples
    # NOTE: the calibration session and its copy of the model are garbage now; collect them before
    # the quantized model and the self-check's sessions are built (peak RSS, not only speed).
    gc.collect()
    return found


def _run(model: ir.Model, pipeline: Pipeline, resources: Iterable[Any], report: QuantizeReport,
         instrumentations: Sequence[Any] = ()) -> None:
    ctx = PassContext.with_resources(resources)
    ctx.instrumentations.extend(instrumentations)
    result = apply(model, pipeline, ctx)
    for key, value in result.stats.items():
        report.stats[key] = report.stats.get(key, 0) + int(value)
    report.diagnostics.extend(result.diagnostics)


def _self_check(model: ir.Model, reference: Any, held: CalibrationData | None, target: Target,
                report: QuantizeReport, *, keep_unfused: bool) -> None:
    """Measures the result in onnxruntime; drops QDQ groups that did not fuse, then measures again."""
    from onnxq.validation.fusion import remove_unfused_qdq
    from onnxq.validation.self_check import self_check

    samples = [f for _, f in itertools.islice(held.feeds(model), HOLDOUT)] if held is not None else None
    check = self_check(reference, model, samples, target=target)
    fusion = check.fusion
    if fusion is not None and fusion.wasted and not keep_unfused:
        removed = remove_unfused_qdq(model, fusion)
        if removed:
            report.stats["self-check.unfused_qdq_removed"] = removed
            for group in fusion.wasted:
                report.diagnostics.append(Diagnostic(f"did not fuse, Q/DQ removed: {group}", Severity.INFO))
            check = self_check(reference, model, samples, target=target)
    report.self_check = check


class AlreadyQuantizedError(UserError):
    """The input runs on integer kernels already."""


def refuse_integer_model(model: ir.Model) -> None:
    """Raises AlreadyQuantizedError when ``model`` runs integer kernels (QOperator, dynamic, weight-only)."""
    from onnxq.validation.fusion import INTEGER_KERNELS

    found: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in INTEGER_KERNELS:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    if found:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(found.items()))
        raise AlreadyQuantizedError(
            f"the model is already quantized ({ops}): quantize its float original; "
            "'onnxq check' and 'onnxq bench' take this one as it is")


def _report_float_bodies(model: ir.Model, profile: Target, report: QuantizeReport) -> None:
    """Says which compute ops inside If / Loop / Scan bodies static quantization left float.

    Static placement covers the main graph (its ranges are observed there); LSTM / GRU and Gather
    in bodies take dynamic INT8 beside it. Without this line a model whose whole network sits in
    an If (silero-vad's torch.export build: Convs and the decomposed LSTM's Gemms) was reported
    "ok" with nothing quantized.
    """
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if (node.graph is not model.graph and node.domain in ("", "ai.onnx")
                and node.op_type in profile.anchor_ops):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return
    placed = report.stats.get("insert-qdq.nodes_quantized", 0)
    what = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
    report.diagnostics.append(Diagnostic(
        f"{sum(counts.values())} compute node(s) inside If/Loop/Scan bodies stay float ({what}): static "
        "quantization places QDQ on the main graph only (LSTM, GRU and Gather in bodies take dynamic INT8)"
        + ("; nothing on the main graph was quantized either" if not placed else ""),
        Severity.WARNING if not placed else Severity.INFO))


def _has_op(model: ir.Model, op_type: str) -> bool:
    return any(node.op_type == op_type for node in ir.traversal.RecursiveGraphIterator(model.graph))


def _weight_bytes(model: ir.Model) -> int:
    """Bytes of the main graph's initializers, from their types and shapes (nothing is read)."""
    total = 0
    for value in model.graph.initializers.values():
        if value.dtype is not None and value.shape is not None and value.shape.is_static():
            total += value.dtype.itemsize * int(np.prod(value.shape.numpy(), dtype=np.int64))
    return total


def _op_histogram(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


class _Clock:
    def __init__(self, sink: dict[str, float]) -> None:
        self.sink = sink

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - self.start
