"""Self-check after quantizing: did it fuse, is it faster, is it still faithful, and if not, why.

``self_check(float_model, quant_model, samples, target=...)`` runs both models in onnxruntime CPU
(``ORT_ENABLE_ALL``, 1 thread, as deployed) and reports:

- the fusion report (:mod:`onnxq.validation.fusion`): integer kernels, leftover Q/DQ and every QDQ
  group that stayed float with its reason;
- latency of the quantized model against the float one on one sample (interleaved runs, medians,
  a few seconds at most);
- fidelity on the held-back samples: SQNR (dB), cosine similarity and max abs error per output,
  top-1 agreement for outputs that look like class scores (2-D ``[N, C]`` float, ``C > 1``);
- per-layer SQNR of the tensors the quantized graph quantizes (matched by name to the float
  graph's), worst first, to name the layer that hurts;
- warnings naming the cause when the result is slower than float or below a fidelity floor.

It never raises on a bad result: it reports. It raises only when a model cannot run at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxq.errors import first_line
from onnxq.framework.base import Diagnostic, Severity
from onnxq.runtime import Feeds, runnable_inputs, select_inputs
from onnxq.runtime import session as runtime_session
from onnxq.targets import qnn_htp
from onnxq.validation import output_kinds as kinds
from onnxq.validation.bench import interleaved_times, session
from onnxq.validation.fusion import FusionReport, fusion_report

#: Fidelity floors: below them the report warns.
SQNR_FLOOR_DB = 20.0
TOP1_FLOOR = 0.97
#: Class scores and sequences are judged on agreement, and fail below this SQNR whatever it says.
DECISION_SQNR_FLOOR_DB = 10.0
#: Per-layer SQNR below this is named as a likely cause.
LAYER_SQNR_FLOOR_DB = 15.0
#: Layers whose activations one per-layer run returns at once.
LAYER_GROUP = 64
#: Layers are observed on at most this many samples.
LAYER_SAMPLES = 4


@dataclasses.dataclass(frozen=True)
class OutputFidelity:
    """How close one output of the quantized model is to the float model's."""

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    #: Share of samples whose arg-max class agrees; ``None`` when the output is not class scores.
    top1_agreement: float | None = None
    #: Why the output cannot be compared at all (shape or dtype differs), else ``None``.
    mismatch: str | None = None
    #: What the output holds (:mod:`onnxq.validation.output_kinds`), which picks its measure.
    kind: str = "tensor"
    #: Share of sequences whose CTC decoding agrees; ``None`` unless the output is a sequence.
    sequence_agreement: float | None = None
    #: The agreement above without excusing float-model ties (exact arg-max; ``output_kinds.decided``).
    exact_agreement: float | None = None


@dataclasses.dataclass(frozen=True)
class LayerFidelity:
    """SQNR of one quantized tensor against its float counterpart."""

    tensor: str
    node: str
    sqnr_db: float
    #: Position of the tensor in the float graph (inputs first), to find where the error starts.
    position: int = 0


@dataclasses.dataclass(frozen=True)
class LatencyCheck:
    float_ms: float
    quant_ms: float
    runs: int

    @property
    def speedup(self) -> float:
        return self.float_ms / self.quant_ms if self.quant_ms > 0 else math.inf


@dataclasses.dataclass
class SelfCheckReport:
    """What :func:`self_check` found; ``warnings`` is empty only when everything is within bounds."""

    target: str
    samples: int
    fusion: FusionReport | None
    latency: LatencyCheck | None
    outputs: list[OutputFidelity]
    layers: list[LayerFidelity]
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: ``--target qnn``: where the nodes ran on the HTP simulator (:class:`onnxq.targets.qnn_htp.Offload`).
    offload: Any = None

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "samples": self.samples,
            "fusion": self.fusion.to_json() if self.fusion else None,
            "offload": None if self.offload is None else dataclasses.asdict(self.offload),
            "latency": None if self.latency is None else {
                "float_ms": self.latency.float_ms, "quant_ms": self.latency.quant_ms,
                "speedup": self.latency.speedup, "runs": self.latency.runs},
            "outputs": [_finite(dataclasses.asdict(o)) for o in self.outputs],
            "layers": [_finite(dataclasses.asdict(layer)) for layer in self.layers],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "lines": self.lines(),
        }

    def lines(self, *, verbose: bool = False) -> list[str]:
        out = [f"self-check ({self.target}): " + ("ok" if self.ok else f"{len(self.warnings)} warning(s)")]
        if self.fusion is not None:
            out.extend(self.fusion.lines(verbose=verbose))
        if self.offload is not None:
            out.append(f"offload: {self.offload.summary()}")
        if self.latency is not None:
            out.append(f"latency (1 thread, median of {self.latency.runs}): float {self.latency.float_ms:.3f} ms, "
                       f"quantized {self.latency.quant_ms:.3f} ms ({self.latency.speedup:.2f}x)")
        for o in self.outputs:
            if o.mismatch:
                out.append(f"output '{o.name}': {o.mismatch}")
                continue
            top1 = f", top-1 agreement {o.top1_agreement:.1%}" if o.top1_agreement is not None else ""
            if o.sequence_agreement is not None:
                top1 = f", sequence agreement {o.sequence_agreement:.1%}"
            agreed = o.top1_agreement if o.top1_agreement is not None else o.sequence_agreement
            if o.exact_agreement is not None and agreed is not None and o.exact_agreement < agreed:
                top1 += f" ({o.exact_agreement:.1%} exact; the rest changed only where FP32 itself was within 2:1)"
            out.append(f"output '{o.name}' on {self.samples} sample(s): SQNR {_db(o.sqnr_db)}, cosine {o.cosine:.5f}, "
                       f"max abs error {o.max_abs_error:.4g}{top1}")
        if self.layers:
            worst = ", ".join(f"{layer.node} {_db(layer.sqnr_db)}" for layer in self.layers[:3])
            out.append(f"worst layers: {worst}")
        out.extend(f"note: {n}" for n in self.notes)
        out.extend(f"warning: {w}" for w in self.warnings)
        return out

    def diagnostics(self) -> list[Diagnostic]:
        """Warnings (and the groups left in float) as pass-style diagnostics."""
        found = [Diagnostic(w, Severity.WARNING) for w in self.warnings]
        if self.fusion is not None:
            found.extend(Diagnostic(f"stayed float ({g.kernel}): {g.reason}", Severity.INFO, g.node)
                         for g in self.fusion.unfused)
        found.extend(Diagnostic(n) for n in self.notes)
        return found


def _db(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.1f} dB"


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # NOTE: JSON has no infinity; an exact match is reported as null SQNR.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def self_check(
    float_model: ir.Model,
    quant_model: ir.Model,
    samples: Iterable[Mapping[str, np.ndarray]] | None,
    *,
    target: Any = "ort-cpu",
    latency_budget_s: float = 2.0,
    sqnr_floor_db: float = SQNR_FLOOR_DB,
    top1_floor: float = TOP1_FLOOR,
) -> SelfCheckReport:
    """Checks a quantized model against its float original.

    Args:
        float_model: The float model (not modified).
        quant_model: The quantized model (not modified).
        samples: Held-back feeds (extra arrays ignored); the first also times both models.
            ``None`` or empty: one generated sample, and a note that fidelity is on random data.
        target: A ``Target`` profile or its name; fusion and latency are onnxruntime CPU figures, so
            other targets get fidelity only (and a note).
        latency_budget_s: Time budget of the timed runs.
        sqnr_floor_db: Output SQNR below this gets a warning.
        top1_floor: Top-1 agreement below this gets a warning.
    """
    target_name = target if isinstance(target, str) else str(getattr(target, "name", target))
    report = SelfCheckReport(target_name, 0, None, None, [], [])
    feeds = [select_inputs(float_model, s) for s in (samples or [])]
    if not feeds:
        # NOTE: inputs the float model runs on (a reflect Pad or an If branch may refuse the first try)
        feeds = [runnable_inputs(float_model, seed=0)[0]]
        report.notes.append("no held-back samples: fidelity measured on one generated input")
    report.samples = len(feeds)
    float_sess, quant_sess = session(float_model), session(quant_model)

    on_ort_cpu = target_name == "ort-cpu"
    if on_ort_cpu:
        cpu = getattr(target, "cpu", None)
        report.fusion = fusion_report(quant_model, cpu=cpu)
        f_feed = feeds[0]
        times = interleaved_times([lambda s=float_sess: s.run(None, f_feed), lambda s=quant_sess: s.run(None, f_feed)],
                                  warmup=3, min_runs=10, max_runs=500, budget_s=latency_budget_s)
        report.latency = LatencyCheck(float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3),
                                      len(times[0]))
    elif target_name.startswith("qnn") and qnn_htp.available():
        # NOTE: the HTP's arithmetic is what a device computes: fidelity is judged on its outputs.
        report.offload = qnn_htp.offload(quant_model)
        report.notes.append("fidelity measured on the HTP simulator (onnxruntime-qnn); latency is not measured")
    else:
        hint = f" ({qnn_htp.INSTALL_HINT} to measure offload and fidelity on the HTP simulator)" \
            if target_name.startswith("qnn") else ""
        report.notes.append(f"{target_name} cannot run here: fusion and latency are not measured, "
                            f"fidelity is measured on the QDQ graph's reference arithmetic (onnxruntime CPU "
                            f"without fusion){hint}")
        # NOTE: not this CPU's fused kernels: u8s8 with full-range int8 weights saturates on AVX2
        # without VNNI (an NNAPI digits CNN: 36.6 dB as written, 15.5 dB fused here), which the
        # device's integer arithmetic does not.
        quant_sess = runtime_session(quant_model)

    names = [o.name for o in float_sess.get_outputs()]
    refs = [float_sess.run(names, f) for f in feeds]
    if report.offload is not None:
        htp = qnn_htp.run(quant_model, feeds)
        gots = [[h[n] for n in names] for h in htp]
    else:
        gots = [quant_sess.run(names, f) for f in feeds]
    declared = kinds.output_kinds(float_model)
    for i, name in enumerate(names):
        report.outputs.append(_fidelity(name, [r[i] for r in refs], [g[i] for g in gots], declared.get(name)))
    # NOTE: the per-layer sessions below hold both models again; free these first (bert_like: the
    # self-check's peak fell from about 1.5 GB to well under 1 GB).
    del float_sess, quant_sess, refs, gots
    report.layers, note = _layers(float_model, quant_model, feeds[:LAYER_SAMPLES])
    if note:
        report.notes.append(note)
    _warn(report, sqnr_floor_db=sqnr_floor_db, top1_floor=top1_floor)
    return report


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """10 log10(signal power / noise power); ``inf`` when equal, ``-inf`` for a zero signal with noise."""
    ref = np.asarray(reference, np.float64).ravel()
    noise = float(np.sum((ref - np.asarray(actual, np.float64).ravel()) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _fidelity(name: str, refs: Sequence[np.ndarray], gots: Sequence[np.ndarray],
              kind: str | None = None) -> OutputFidelity:
    """Fidelity of one output; ``kind`` (``output_kinds``) picks agreement measures, default: by shape."""
    for i, (r, g) in enumerate(zip(refs, gots, strict=True)):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape or r.dtype != g.dtype:
            # NOTE: the same numbers in another shape are a different result (a [T, 1, C] sequence
            # returned as [1, T*C] scores 0 on its task), so this is a failure, never a raveled match.
            return OutputFidelity(name, -math.inf, 0.0, math.inf, mismatch=(
                f"sample {i}: {g.dtype}{list(g.shape)} where the float model gives {r.dtype}{list(r.shape)}"))
    if not refs or np.asarray(refs[0]).dtype.kind != "f":
        equal = all(np.array_equal(r, g) for r, g in zip(refs, gots, strict=True))
        return OutputFidelity(name, math.inf if equal else -math.inf, 1.0 if equal else 0.0,
                              0.0 if equal else math.inf)
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in refs])
    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in gots])
    finite = np.isfinite(ref) & np.isfinite(got)
    if not finite.all():
        return OutputFidelity(name, -math.inf, 0.0, math.inf)
    norm = float(np.linalg.norm(ref) * np.linalg.norm(got))
    cosine = float(ref @ got / norm) if norm else (1.0 if not ref.any() and not got.any() else 0.0)
    max_abs = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if kind is None:  # NOTE: no graph to read: 2-D scores are taken for class scores, as before
        kind = kinds.CLASS_SCORES if all(np.ndim(r) == 2 for r in refs) else kinds.TENSOR
    kind = kinds.kind_of_arrays(kind, refs)
    top1 = kinds.top1_agreement(refs, gots) if kind == kinds.CLASS_SCORES else None
    sequence = kinds.sequence_agreement(refs, gots) if kind == kinds.SEQUENCE else None
    exact = (kinds.top1_agreement(refs, gots, tie=0.0) if kind == kinds.CLASS_SCORES
             else kinds.sequence_agreement(refs, gots, tie=0.0) if kind == kinds.SEQUENCE else None)
    return OutputFidelity(name, sqnr_db(ref, got), cosine, max_abs, top1, kind=kind, sequence_agreement=sequence,
                          exact_agreement=exact)


def _layers(float_model: ir.Model, quant_model: ir.Model,
            feeds: Sequence[Feeds]) -> tuple[list[LayerFidelity], str | None]:
    """SQNR of every float tensor the quantized graph quantizes that the float graph also has.

    Returns the worst layers first, and a note when they could not be measured.
    """
    # NOTE: copies share the weights (external ones stay lazy); only their graph outputs change.
    float_copy, quant_copy = float_model.clone(), quant_model.clone()
    float_values = {v.name: v for v in _values(float_copy.graph)}
    quant_values = {v.name: v for v in _values(quant_copy.graph)}
    graph_inputs = {v.name for v in float_copy.graph.inputs}
    produced = {name: f"input '{name}'" for name in graph_inputs}
    produced.update({out.name: node.name or node.op_type for node in float_copy.graph for out in node.outputs})
    position = {name: i for i, name in enumerate(produced)}
    outputs = {o.name for o in float_copy.graph.outputs}
    dq_of = {node.inputs[0].name: node.outputs[0].name for node in quant_copy.graph
             if node.op_type == "DequantizeLinear" and node.inputs[0] is not None}
    # NOTE: compare the float tensor with what the quantized graph's consumers see, the DQ after its
    # Q: a quantizer may drop a Relu into the Q's range and leave its name on the pre-Relu tensor.
    tensors: dict[str, tuple[str, str]] = {}
    for node in quant_copy.graph:
        name = node.inputs[0].name if node.op_type == "QuantizeLinear" and node.inputs[0] is not None else ""
        if name in produced and name not in outputs and node.outputs[0].name in dq_of:
            tensors.setdefault(name, (dq_of[node.outputs[0].name], produced[name]))
    if not tensors:
        return [], None
    names = sorted(tensors)
    inner = [n for n in names if n not in graph_inputs]
    quant_names = [tensors[n][0] for n in names]
    # NOTE: signal and noise power are summed sample by sample, and the layers are read a group at a
    # time from sessions that expose only that group: onnxruntime keeps every declared graph output
    # of a run alive, and all layers of an 800x608 detector at once held gigabytes. Each extra group
    # costs one session of each model.
    inner_set = set(inner)
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    base = {id(m): list(m.graph.outputs) for m in (float_copy, quant_copy)}
    groups = [range(i, min(i + LAYER_GROUP, len(names))) for i in range(0, len(names), LAYER_GROUP)]
    try:
        for group in groups:
            want_f = [names[i] for i in group if names[i] in inner_set]
            want_q = [quant_names[i] for i in group]
            for copy, values, wanted in ((float_copy, float_values, want_f), (quant_copy, quant_values, want_q)):
                existing = {o.name for o in base[id(copy)]}
                copy.graph.outputs[:] = [*base[id(copy)], *(values[n] for n in wanted if n not in existing)]
            # NOTE: no graph optimization, so every named tensor survives to be read.
            f_sess = runtime_session(float_copy, arena=False)
            q_sess = runtime_session(quant_copy, arena=False)
            for f in feeds:
                values = dict(zip(want_f, f_sess.run(want_f, f), strict=True)) if want_f else {}
                gots = q_sess.run(want_q, f)
                for i, got_value in zip(group, gots, strict=True):
                    name = names[i]
                    ref = np.asarray(values[name] if name in values else f[name], np.float64)
                    got = np.asarray(got_value, np.float64)
                    if ref.shape != got.shape:
                        signal[i] = noise[i] = np.nan
                        continue
                    signal[i] += float(np.sum(ref**2))
                    noise[i] += float(np.sum((ref - got) ** 2))
                del values, gots
            del f_sess, q_sess
    except Exception as e:  # noqa: BLE001  # per-layer figures are best effort; outputs are already checked
        return [], f"per-layer SQNR not measured: {first_line(e)}"
    layers = []
    for i, name in enumerate(names):
        if np.isnan(signal[i]):
            continue
        db = math.inf if noise[i] == 0 else -math.inf if signal[i] == 0 else 10 * math.log10(signal[i] / noise[i])
        layers.append(LayerFidelity(name, tensors[name][1], db, position[name]))
    layers.sort(key=lambda layer: (layer.sqnr_db, layer.position))
    return layers, None


def _values(graph: ir.Graph) -> Iterable[ir.Value]:
    """The main graph's inputs and node outputs (the tensors a run can expose)."""
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _warn(report: SelfCheckReport, *, sqnr_floor_db: float, top1_floor: float) -> None:
    if report.offload is not None and not report.offload.complete:
        names = ", ".join(f"{n} ({op})" for n, op in report.offload.fallbacks[:3])
        more = f" and {len(report.offload.fallbacks) - 3} more" if len(report.offload.fallbacks) > 3 else ""
        report.warnings.append(f"not every node runs on the HTP: {report.offload.summary()}"
                               + (f"; first: {names}{more}" if names else ""))
    fusion = report.fusion
    causes: list[str] = []
    if fusion is not None:
        # NOTE: float groups whose Q/DQ only add time come first: they are the removable cost.
        unfused = sorted(fusion.unfused, key=lambda g: not g.wasted)
        if unfused:
            names = ", ".join(g.node for g in unfused[:3]) + (f" and {len(unfused) - 3} more" if len(unfused) > 3 else "")
            causes.append(f"{len(unfused)} QDQ group(s) stayed float, {len(fusion.wasted)} with Q/DQ that only add "
                          f"time ({names}; first: {unfused[0].reason})")
        causes.extend(w for w in fusion.warnings if w.startswith(("ConvInteger", "MatMulInteger")))
    if report.latency is not None and report.latency.speedup < 1.0:
        why = "; ".join(causes) if causes else (
            "every QDQ group fused; the model may be too small for integer kernels to pay off "
            "(or the machine was busy: rerun)")
        report.warnings.append(f"quantized model is slower than float ({report.latency.speedup:.2f}x): {why}")
    low_layers = [layer for layer in report.layers if layer.sqnr_db < LAYER_SQNR_FLOOR_DB]
    saturation = [w for w in (fusion.warnings if fusion else []) if w.startswith("u8s8")]
    for o in report.outputs:
        if o.mismatch:
            report.warnings.append(f"output '{o.name}' differs in shape or dtype from the float model's: {o.mismatch}")
            continue
        problems = []
        # NOTE: class scores and sequences are judged on what they decide (their SQNR is reported):
        # logits at 15 dB can agree on every arg-max, an embedding's arg-max means nothing.
        decision = o.top1_agreement is not None or o.sequence_agreement is not None
        if o.sqnr_db < sqnr_floor_db and not decision:
            problems.append(f"SQNR {_db(o.sqnr_db)} < {sqnr_floor_db:g} dB")
        elif decision and o.sqnr_db < DECISION_SQNR_FLOOR_DB:
            # NOTE: a few held-back samples can agree by luck on scores that have collapsed
            problems.append(f"SQNR {_db(o.sqnr_db)} < {DECISION_SQNR_FLOOR_DB:g} dB (the scores collapsed)")
        if o.top1_agreement is not None and o.top1_agreement < top1_floor:
            problems.append(f"top-1 agreement {o.top1_agreement:.1%} < {top1_floor:.0%}")
        if o.sequence_agreement is not None and o.sequence_agreement < top1_floor:
            problems.append(f"sequence agreement {o.sequence_agreement:.1%} < {top1_floor:.0%}")
        if not problems:
            continue
        reasons: list[str] = []
        if low_layers:
            first = min(low_layers, key=lambda layer: layer.position)
            reasons.append(f"error starts at {first.node} ('{first.tensor}', {_db(first.sqnr_db)}, the first layer "
                       f"below {LAYER_SQNR_FLOOR_DB:g} dB in graph order); worst: "
                       + ", ".join(f"{layer.node} {_db(layer.sqnr_db)}" for layer in low_layers[:3]))
        reasons.extend(saturation)
        if not reasons:
            reasons.append("no single layer stands out; try another calibration method or per-channel weights")
        reasons.append("'onnxq quantize --max-accuracy-drop X' keeps the layers that need it in float")
        report.warnings.append(f"output '{o.name}' below the fidelity floor ({', '.join(problems)}): {'; '.join(reasons)}")
    if saturation and not any("below the fidelity floor" in w for w in report.warnings):
        report.notes.extend(saturation)
