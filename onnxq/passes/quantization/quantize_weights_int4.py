"""quantize-weights-int4: MatMul weights to 4 bits per block along K, as ``com.microsoft.MatMulNBits``.

Weight-only: activations stay float, each constant ``[K, N]`` MatMul weight is stored as 4-bit
integers in blocks of ``block_size`` along K with one scale (and zero point when asymmetric) per
block, and onnxruntime's ``MatMulNBits`` kernel dequantizes on the fly. ``rtn`` (blockwise round
to nearest) is ours in numpy, code for code onnxruntime's ``MatMulNBitsQuantizer`` (tested), because
that one serializes the whole model first while ours reads, rounds and releases one weight at a
time (a model above 2 GB in external data stays within a weight plus the packed ones); it also
gives ``eight_bit`` layers 8-bit blocks. ``hqq`` (half-quadratic, Badri & Shaji 2023, calibration-free) is
ours too, in numpy and one weight at a time, matching onnxruntime's torch implementation (which holds
the model; kept here, ``_onnxruntime_hqq``, as the tests' reference). ``gptq`` and ``awq`` are calibration
driven and ours (:mod:`onnxq.passes.quantization._int4` says why and which papers):
each weight's input is streamed through onnxruntime once, accumulating ``X^T X`` and ``mean|x|``
per input channel (memory does not grow with the samples), from the float model (not from the
partly quantized one, as onnxruntime's GPTQ does too). AWQ's inverse scale goes into what
produces the activation when that is exact (a LayerNormalization, a MatMul + bias, a Gemm, through
Relu), else a ``Mul`` before the quantized MatMuls (llm-awq's ``ScaledActivation``).

``accuracy_level`` (MatMulNBits' compute type: 0 unset, 1 fp32, 4 int8 activations) defaults to
4: measured on the zoo's BERT-like encoder (6 layers, hidden 384; AMD EPYC, AVX2 without VNNI, 1
thread, batch 1), level 4 ran 2.76x FP32 against 1.08x for level 0 and 1.07x for level 1, at the
same fidelity (mean cosine 0.99868 and 0.99868, SQNR 25.8 dB both, 8 samples).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from onnxq.calibration.data import CalibrationData
from onnxq.errors import OptionError
from onnxq.framework.base import Pass, PassResult
from onnxq.framework.context import PassContext
from onnxq.ir.constants import read_and_release
from onnxq.ir.interop import replace_contents
from onnxq.passes.quantization import _int4
from onnxq.passes.quantization._common import PASS_METADATA_KEY, NameScope, Selection

ALGORITHMS = ("rtn", "hqq", "gptq", "awq")
#: Algorithms that need calibration samples (the ``CalibrationData`` resource).
CALIBRATED = ("gptq", "awq")
#: Activations streamed per onnxruntime session (each holds a K x K accumulator).
GROUP = 8
#: MatMulNBits compute type: int8 activations (see the module docstring).
ACCURACY_LEVEL = 4
BLOCK_SIZES = (16, 32, 64, 128, 256)
FORMATS = ("nbits", "qdq")
#: Blocked DequantizeLinear (``block_size``) and 4-bit types arrive at opset 21.
QDQ_OPSET = 21
logger = logging.getLogger(__name__)


class QuantizeWeightsInt4(Pass):
    name: ClassVar[str] = "quantize-weights-int4"
    summary: ClassVar[str] = "MatMul weights to 4-bit blocks along K (MatMulNBits), weight-only: RTN, HQQ, GPTQ, AWQ"

    @dataclasses.dataclass(frozen=True)
    class Options:
        algo: str = dataclasses.field(default="rtn", metadata={"help": "rtn, hqq, gptq or awq"})
        block_size: int = dataclasses.field(default=32, metadata={"help": "weights per block along K"})
        symmetric: bool = dataclasses.field(default=True, metadata={"help": "zero point 8 (not hqq)"})
        act_order: bool = dataclasses.field(default=False, metadata={
            "help": "gptq: quantize input channels by decreasing X^T X diagonal"})
        max_samples: int = dataclasses.field(default=64, metadata={"help": "gptq / awq: calibration samples read"})
        accuracy_level: int = dataclasses.field(default=ACCURACY_LEVEL, metadata={
            "help": "MatMulNBits compute type (0 unset, 1 fp32, 4 int8 activations)"})
        include: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "only matching MatMuls"})
        exclude: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "MatMuls kept float"})
        embeddings: bool = dataclasses.field(default=False, metadata={
            "help": "also Gather on a constant 2-D table (embeddings), 4-bit blocks along the hidden axis: "
                    "com.microsoft.GatherBlockQuantized (nbits) or a blocked DequantizeLinear before it (qdq)"})
        format: str = dataclasses.field(default="nbits", metadata={
            "help": "nbits (com.microsoft.MatMulNBits, onnxruntime) or qdq (blocked uint4 DequantizeLinear, "
                    "opset 21, before the MatMul: TensorRT 10 and other QDQ consumers)"})
        eight_bit: tuple[str, ...] = dataclasses.field(default=(), metadata={
            "help": "MatMuls given 8-bit blocks (RTN) instead: names, op types, regexes, 'ends' (first and last), "
                    "or 'auto[:SHARE]' (the most sensitive on the calibration samples, up to SHARE of the weights, "
                    "default 0.1)"})

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        o = self.options
        if o.algo not in ALGORITHMS:
            raise OptionError(f"quantize-weights-int4: algo {o.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        if o.block_size not in BLOCK_SIZES:
            raise OptionError(f"quantize-weights-int4: block_size {o.block_size}; choose one of "
                              f"{', '.join(map(str, BLOCK_SIZES))}")
        if o.format not in FORMATS:
            raise OptionError(f"quantize-weights-int4: format {o.format!r}; choose one of {', '.join(FORMATS)}")
        if o.format == "qdq" and o.algo == "hqq":
            raise OptionError("quantize-weights-int4: hqq's zero points are floats, which DequantizeLinear cannot "
                              "hold: format nbits only")
        if o.format == "qdq" and model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) < QDQ_OPSET:
            raise OptionError(f"quantize-weights-int4: format qdq writes blocked DequantizeLinear, which needs "
                              f"opset {QDQ_OPSET} (run convert-opset first)")
        selection = Selection(tuple(o.include), tuple(o.exclude))
        gemms = _gemms_to_matmul(model, selection)
        # NOTE: an initializer that is also a graph input can be overridden at run time: not a constant
        candidates = [n for n in model.graph if n.op_type == "MatMul" and n.domain in ("", "ai.onnx")
                      and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const_value is not None
                      and not n.inputs[1].is_graph_input() and len(n.inputs[1].const_value.shape) == 2]
        for index, node in enumerate(candidates):
            if not node.name:
                node.name = f"MatMul_int4_{index}"  # NOTE: onnxruntime's quantizer includes nodes by name
        chosen = [n.name for n in candidates if selection.selects(n)]
        if not chosen and not o.embeddings:
            return PassResult(False, {})
        level = o.accuracy_level
        eight = _eight_bit(candidates, chosen, o.eight_bit)
        auto = [p for p in o.eight_bit if p == AUTO or p.startswith(AUTO + ":")]
        sensitivity: dict[str, float] = {}
        if auto:
            data = ctx.resources.get(CalibrationData)
            if data is None:
                raise OptionError("quantize-weights-int4: eight_bit 'auto' chooses layers from calibration samples "
                                  "(--calib PATH)")
            share = _auto_share(auto[-1])
            picked, sensitivity = _most_sensitive(model, [n for n in candidates if n.name in set(chosen)], data, o,
                                                  share)
            eight = [name for name in chosen if name in set(eight) | set(picked)]
        four = [name for name in chosen if name not in set(eight)]
        awq: dict[str, int] = {}
        if eight:
            _rtn(model, eight, 8, o)
        if four and o.algo == "rtn":
            _rtn(model, four, 4, o)
        elif four and o.algo in CALIBRATED:
            data = ctx.resources.get(CalibrationData)
            if data is None:
                raise OptionError(f"quantize-weights-int4: algo {o.algo} needs calibration samples (--calib PATH)")
            wanted = set(four)
            awq = _calibrated(model, [n for n in model.graph if n.op_type == "MatMul" and n.name in wanted], data, o)
        elif four:
            _hqq(model, four, o)
        gathers = _embeddings(model, selection, o) if o.embeddings else 0
        bits = [n.attributes.get_int("bits", 4) for n in model.graph if n.op_type == "MatMulNBits"]
        bits += [4 if n.inputs[0].dtype in (ir.DataType.UINT4, ir.DataType.INT4) else 8 for n in model.graph
                 if n.op_type == "DequantizeLinear" and n.metadata_props.get(PASS_METADATA_KEY) == self.name
                 and any(u.node.op_type == "MatMul" for u in n.outputs[0].uses())]
        stats = {"matmuls_int4": bits.count(4), "matmuls_int8": bits.count(8),
                 "matmuls_float": len(candidates) - len(bits), "gemms_as_matmul": gemms,
                 **awq, "block_size": o.block_size, "accuracy_level": level,
                 "eight_bit_chosen_by_sensitivity": sum(1 for n in eight if n in sensitivity),
                 "gathers_int4": gathers}
        if o.format == "qdq":
            stats.pop("accuracy_level")  # NOTE: a MatMulNBits attribute
        return PassResult(bool(bits) or gathers > 0, {k: v for k, v in stats.items() if v or k == "accuracy_level"})


#: ``eight_bit`` pattern that names the first and the last quantizable MatMul (first projection, LM head).
ENDS = "ends"


#: ``eight_bit`` pattern ``auto[:SHARE]``: the MatMuls whose 4-bit rounding costs the most, measured
#: on the calibration samples, up to SHARE of the weights (default 0.1).
AUTO = "auto"
AUTO_SHARE = 0.1


def _auto_share(pattern: str) -> float:
    if pattern == AUTO:
        return AUTO_SHARE
    try:
        share = float(pattern.split(":", 1)[1])
    except ValueError:
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise OptionError(f"quantize-weights-int4: eight_bit {pattern!r}: give auto:SHARE with SHARE in (0, 1]")
    return share


#: Calibration samples the ``auto`` analysis reads (N + 2 runs of each).
AUTO_SAMPLES = 16


def _most_sensitive(model: ir.Model, nodes: list[ir.Node], data: CalibrationData, o: QuantizeWeightsInt4.Options,
                    share: float) -> tuple[list[str], dict[str, float]]:
    """The MatMuls to give 8-bit blocks, measured end to end on the calibration samples; and every
    node's gain.

    The model runs with all the candidates' weights at 4 bits (round to nearest, dequantized), then
    once per candidate with that one at 8 bits: its gain is how much the error of the model's
    outputs against float32 (squared, relative to their energy, summed over ``AUTO_SAMPLES``
    samples) falls. Layers are taken by gain per weight while the 8-bit weights stay within
    ``share`` of all of them (the first one always). The weights are graph inputs of one session,
    fed per run, so the N + 2 runs share it (leave-one-out sensitivity as in the mixed-precision
    search; a layer's own output error does not say how the rest of the network amplifies it:
    measured on the zoo's byte LM, that local criterion lost to simply keeping the first and last
    layers 8-bit).
    """
    import onnx
    import onnxruntime as ort

    from onnxq.runtime import for_session, select_inputs, session_options

    weights = {n.name: str(n.inputs[1].name) for n in nodes}
    ready, folder = for_session(model)  # NOTE: external weights are read from their own folder
    proto = ir.to_proto(ready)
    del ready
    wanted = set(weights.values())
    kept = [t for t in proto.graph.initializer if t.name not in wanted]
    moved = [t for t in proto.graph.initializer if t.name in wanted]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    del moved
    opts = session_options(optimize=True, external_folder=folder)
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del proto
    source = {str(n.inputs[1].name): n.inputs[1] for n in nodes}

    def weight(name: str) -> np.ndarray:
        return read_and_release(source[name].const_value).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def coded(name: str, bits: int) -> np.ndarray:
        w = weight(name)
        return _int4.rtn(w, o.block_size, o.symmetric, bits=bits).dequantize(len(w))

    # NOTE: memory: the 4-bit weights (dequantized) for every run, one float or 8-bit weight at a time
    four = {w: coded(w, 4) for w in wanted}
    feeds = [select_inputs(model, f) for _, f in zip(range(AUTO_SAMPLES), (f for _, f in data.feeds(model)),
                                                     strict=False)]
    float_w = {w: weight(w) for w in wanted}  # NOTE: all at once, for the reference runs only
    references = [sess.run(None, {**f, **float_w}) for f in feeds]
    del float_w
    energy = sum(float(np.sum(np.square(r, dtype=np.float64))) for ref in references for r in ref
                 if np.issubdtype(r.dtype, np.floating))

    def error(swapped: str | None) -> float:
        total = 0.0
        eight = {swapped: coded(swapped, 8)} if swapped else {}
        for f, ref in zip(feeds, references, strict=True):
            fed = {**f, **four, **eight}
            for r, y in zip(ref, sess.run(None, fed), strict=True):
                if np.issubdtype(r.dtype, np.floating):
                    total += float(np.sum(np.square(r.astype(np.float64) - y)))
        return total / max(energy, 1e-30)

    base = error(None)
    gain = {name: base - error(w) for name, w in weights.items()}
    sizes = {name: int(np.prod(four[w].shape)) for name, w in weights.items()}
    total = sum(sizes.values())
    picked: list[str] = []
    used = 0
    for name in sorted(gain, key=lambda n: (-gain[n] / sizes[n], n)):
        if picked and used + sizes[name] > share * total:
            continue
        picked.append(name)
        used += sizes[name]
    logger.info("eight_bit auto: relative output error %.3e with every layer at 4 bits; 8-bit: %s", base,
                ", ".join(f"{n} (-{gain[n]:.2e})" for n in picked))
    return picked, gain


def _eight_bit(candidates: list[ir.Node], chosen: list[str], patterns: tuple[str, ...]) -> list[str]:
    """Names among ``chosen`` that get 8-bit blocks: matching ``patterns`` (``ends``: first and last;
    ``auto`` is resolved by the caller)."""
    patterns = tuple(p for p in patterns if p != AUTO and not p.startswith(AUTO + ":"))
    if not patterns:
        return []
    names = set()
    if ENDS in patterns:
        ordered = [n.name for n in candidates if n.name in set(chosen)]
        names.update(ordered[:1] + ordered[-1:])
    rest = tuple(p for p in patterns if p != ENDS)
    if rest:
        selection = Selection(rest, ())
        names.update(n.name for n in candidates if n.name in set(chosen) and selection.selects(n))
    return [name for name in chosen if name in names]


def _rtn(model: ir.Model, names: list[str], bits: int, o: QuantizeWeightsInt4.Options) -> None:
    """Round to nearest on the MatMuls named ``names``, one weight at a time: a weight held in
    external data is read, rounded and released, so a model of any size stays within one weight
    plus the packed ones (onnxruntime's quantizer serializes the whole model first)."""
    wanted = set(names)
    for node in [n for n in model.graph if n.op_type == "MatMul" and n.name in wanted]:
        weight = read_and_release(node.inputs[1].const_value).astype(np.float32, copy=False)  # type: ignore[arg-type]
        blocks = _int4.rtn(weight, o.block_size, o.symmetric, bits=bits)
        _replace(model, node, blocks, weight.shape, o)
        del weight, blocks
    model.opset_imports.setdefault("com.microsoft", 1)


def _hqq(model: ir.Model, names: list[str], o: QuantizeWeightsInt4.Options) -> None:
    """HQQ (:func:`_int4.hqq`) on the MatMuls named ``names``, one weight at a time like RTN."""
    wanted = set(names)
    for node in [n for n in model.graph if n.op_type == "MatMul" and n.name in wanted]:
        weight = read_and_release(node.inputs[1].const_value).astype(np.float32, copy=False)  # type: ignore[arg-type]
        blocks = _int4.hqq(weight, o.block_size)
        _replace(model, node, blocks, weight.shape, o)
        del weight, blocks
    model.opset_imports.setdefault("com.microsoft", 1)


def _onnxruntime_hqq(model: ir.Model, names: list[str], o: QuantizeWeightsInt4.Options) -> None:
    """onnxruntime's HQQ (``MatMulNBitsQuantizer``, 4 bits) on the MatMuls named ``names``."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    try:
        import torch  # noqa: F401  # NOTE: onnxruntime's HQQ runs on torch
    except ImportError:
        raise OptionError("quantize-weights-int4: algo hqq needs torch (pip install torch)") from None
    config = nbits.HQQWeightOnlyQuantConfig(block_size=o.block_size)
    # NOTE: onnxruntime 1.32 quantizes every MatMul whatever nodes_to_include says (it is OR-ed with
    # the op types); nodes_to_exclude is honoured, so everything else is excluded by name
    wanted = set(names)
    others = [str(n.name) for n in model.graph if n.name and n.name not in wanted]
    quantizer = nbits.MatMulNBitsQuantizer(
        ir.to_proto(model), bits=4, block_size=o.block_size, is_symmetric=o.symmetric,
        accuracy_level=o.accuracy_level, nodes_to_include=names, nodes_to_exclude=others, algo_config=config)
    quiet = logging.getLogger("onnxruntime.quantization")
    before, quiet.level = quiet.level, logging.WARNING
    try:
        quantizer.process()
    finally:
        quiet.setLevel(before)
    replace_contents(model, ir.from_proto(quantizer.model.model))


def _gemms_to_matmul(model: ir.Model, selection: Selection) -> int:
    """``Gemm(x, W, c)`` with a constant 2-D ``W`` (alpha = beta = 1, no transA) -> ``MatMul`` + ``Add``.

    The optimize preset folds MatMul + bias into Gemm for the float and INT8 kernels; onnxruntime's
    4-bit quantizer takes MatMul only, so the weight goes back to a MatMul (``W`` transposed once
    when ``transB``), the bias to an Add.
    """
    import numpy as np

    from onnxq.passes.quantization._common import NameScope, make_node

    names = NameScope(model)
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or not selection.selects(node):
            continue
        attrs = node.attributes
        if attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_float("beta", 1.0) != 1.0:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None or len(w.const_value.shape) != 2 or w.is_graph_input():
            continue
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if attrs.get_int("transB", 0):
            # NOTE: lazy: transposed when read (one weight at a time), not all Gemms' copies at once
            source = w.const_value
            k, n = source.shape[1], source.shape[0]
            name = names.fresh(f"{w.name or 'weight'}_KxN")
            tensor = ir.LazyTensor(
                lambda source=source: ir.tensor(np.ascontiguousarray(read_and_release(source).astype(np.float32).T)),
                dtype=ir.DataType.FLOAT, shape=ir.Shape([k, n]), name=name, cache=False)
            weight = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([k, n]),
                              const_value=tensor)
            graph.register_initializer(weight)
        else:
            weight = w
        base = node.name or "gemm"
        out = node.outputs[0]
        matmul = make_node(QuantizeWeightsInt4.name, names, "MatMul", [node.inputs[0], weight], base=base,
                           output_dtype=ir.DataType.FLOAT, shape=out.shape)
        matmul.name = base  # NOTE: the user's include / exclude patterns name the Gemm
        new_nodes = [matmul]
        result = matmul.outputs[0]
        if c is not None:
            add = make_node(QuantizeWeightsInt4.name, names, "Add", [result, c], base=f"{base}_bias",
                            output_dtype=ir.DataType.FLOAT, shape=out.shape)
            new_nodes.append(add)
            result = add.outputs[0]
        graph.insert_before(node, new_nodes)
        if out.is_graph_output():
            # NOTE: the graph output keeps its name
            original = out.name
            out.name = names.fresh(f"{original}_gemm")
            result.name = original
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        if weight is not w and not w.uses() and w.is_initializer() and not w.is_graph_output():
            graph.initializers.pop(str(w.name))  # NOTE: the lazy transpose keeps its tensor
        count += 1
    return count


def _input_statistics(proto: object, model: ir.Model, names: list[str], data: CalibrationData,
                      max_samples: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(X^T X, mean|x|)`` per input channel (last axis) of each named activation, streamed.

    One onnxruntime session exposes the named tensors; each sample's rows are added to float64
    accumulators and dropped, so memory is the accumulators plus one run's tensors, whatever the
    number of samples.
    """
    import onnx
    import onnxruntime as ort

    from onnxq.runtime import select_inputs

    graph = proto.graph  # type: ignore[attr-defined]
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    hessians: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for count, (_, feed) in enumerate(data.feeds(model)):
        if count >= max_samples:
            break
        for name, value in zip(names, sess.run(names, select_inputs(model, feed)), strict=True):
            # NOTE: float32 products (one run's rows) summed into float64 accumulators
            x = np.asarray(value, np.float32).reshape(-1, value.shape[-1])
            if name not in hessians:
                hessians[name] = np.zeros((x.shape[1], x.shape[1]))
                sums[name] = np.zeros(x.shape[1])
                rows[name] = 0
            hessians[name] += x.T @ x
            sums[name] += np.abs(x).sum(axis=0, dtype=np.float64)
            rows[name] += len(x)
    return {name: (hessians[name], sums[name] / max(rows[name], 1)) for name in hessians}


def _calibrated(model: ir.Model, nodes: list[ir.Node], data: CalibrationData,
                o: QuantizeWeightsInt4.Options) -> dict[str, int]:
    """GPTQ or AWQ on ``nodes`` (MatMuls with constant ``[K, N]`` weights), grouped by their input."""
    by_input: dict[str, list[ir.Node]] = {}
    for node in nodes:
        by_input.setdefault(str(node.inputs[0].name), []).append(node)
    names = list(by_input)
    proto = ir.to_proto(model)
    done = moved = inserted = 0
    for start in range(0, len(names), GROUP):
        group = names[start:start + GROUP]
        stats = _input_statistics(proto, model, group, data, o.max_samples)
        for name in group:
            if name not in stats:
                continue
            h, mean_abs = stats.pop(name)
            consumers = by_input[name]
            weights = [read_and_release(n.inputs[1].const_value).astype(np.float32, copy=False)  # type: ignore[arg-type]
                       for n in consumers]
            if any(w.shape[0] != len(mean_abs) for w in weights):
                continue
            if o.algo == "awq":
                s, _ = _int4.awq_scales(weights, h, mean_abs, o.block_size, o.symmetric)
                if not np.all(s == 1):
                    folded = _scale_activation(model, consumers, 1.0 / s)
                    moved += folded
                    inserted += not folded
                    weights = [w * s[:, None] for w in weights]
                    h = h / np.outer(s, s)
                blocks = [_int4.rtn(w, o.block_size, o.symmetric,
                                    _int4.awq_clip_ratios(w, h, o.block_size, o.symmetric)) for w in weights]
            else:
                blocks = [_int4.gptq(w, h, o.block_size, o.symmetric, act_order=o.act_order) for w in weights]
            for node, w, b in zip(consumers, weights, blocks, strict=True):
                _replace(model, node, b, w.shape, o)
                done += 1
            del h
    if done:
        model.opset_imports.setdefault("com.microsoft", 1)
    return {"awq_scales_folded": moved, "awq_scales_as_mul": inserted}


def _scale_activation(model: ir.Model, consumers: list[ir.Node], factor: np.ndarray) -> bool:
    """Multiplies the activation the ``consumers`` read by ``factor`` per last-axis channel: folded
    into its producer when exact and nothing else reads it (True), else a ``Mul`` before them."""
    from onnxq.passes.quantization._common import NameScope, make_initializer, make_node
    from onnxq.passes.recovery._layers import scale_along, set_initializer
    from onnxq.passes.recovery.smooth_quant import _producer_fold

    value = consumers[0].inputs[0]
    assert value is not None
    readers = {id(use.node) for use in value.uses()}
    if readers == {id(n) for n in consumers} and not value.is_graph_output() and not value.is_graph_input():
        fold = _producer_fold(value)
        if fold is not None:
            for init, axis in fold:
                array = np.asarray(init.const_value.numpy(), np.float32)  # type: ignore[union-attr]
                set_initializer(init, scale_along(array, factor, axis))
            return True
    names = NameScope(model)
    constant = make_initializer(model.graph, names, f"{value.name or 'x'}_awq_scale", factor.astype(np.float32))
    mul = make_node(QuantizeWeightsInt4.name, names, "Mul", [value, constant], base=f"{value.name or 'x'}_awq",
                    output_dtype=ir.DataType.FLOAT, shape=value.shape)
    model.graph.insert_before(consumers[0], mul)
    for node in consumers:
        node.replace_input_with(0, mul.outputs[0])
    return False


def _embeddings(model: ir.Model, selection: Selection, o: QuantizeWeightsInt4.Options) -> int:
    """Gather on a constant 2-D table (axis 0: rows are tokens) -> 4-bit blocks along the hidden axis
    (1), as onnxruntime's quantizer writes them: ``com.microsoft.GatherBlockQuantized`` (int4 codes and
    no zero point when symmetric, uint4 and zero points otherwise), or, in the qdq form, a blocked
    ``DequantizeLinear`` on axis 1 before the Gather. One table at a time, read and released."""
    import ml_dtypes

    from onnxq.passes.quantization._common import NameScope, make_initializer

    count = 0
    names = NameScope(model)
    for node in [n for n in model.graph if n.op_type == "Gather" and n.domain in ("", "ai.onnx")]:
        table = node.inputs[0]
        axis = node.attributes.get_int("axis", 0)
        if (table is None or table.const_value is None or table.is_graph_input() or axis != 0
                or len(table.const_value.shape) != 2 or not selection.selects(node)
                or table.const_value.dtype != ir.DataType.FLOAT or len(table.uses()) != 1):
            continue
        data = read_and_release(table.const_value).astype(np.float32, copy=False)
        v, h = data.shape
        blocks = _int4.rtn(data.T, o.block_size, o.symmetric)  # NOTE: blocks along the hidden axis
        codes, scales = blocks.codes[:h].T, np.ascontiguousarray(blocks.scales.T)
        base = str(table.name)
        if o.symmetric:
            inputs = [make_initializer(model.graph, names, f"{base}_q4",
                                       (codes.astype(np.int16) - 8).astype(ml_dtypes.int4)),
                      make_initializer(model.graph, names, f"{base}_scales", scales.astype(np.float32))]
        else:
            inputs = [make_initializer(model.graph, names, f"{base}_q4", codes.astype(ml_dtypes.uint4)),
                      make_initializer(model.graph, names, f"{base}_scales", scales.astype(np.float32)),
                      make_initializer(model.graph, names, f"{base}_zero_points",
                                       np.ascontiguousarray(blocks.zero_points.T).astype(ml_dtypes.uint4))]
        meta = {PASS_METADATA_KEY: QuantizeWeightsInt4.name}
        if o.format == "qdq":
            dq = ir.Node("", "DequantizeLinear", inputs, num_outputs=1, metadata_props=meta,
                         attributes=[ir.AttrInt64("axis", 1), ir.AttrInt64("block_size", o.block_size)],
                         name=names.fresh(f"{base}_dequantize"))
            dq.outputs[0].name = names.fresh(f"{base}_dequantized")
            dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
            dq.outputs[0].shape = ir.Shape([v, h])
            model.graph.insert_before(node, dq)
            node.replace_input_with(0, dq.outputs[0])
        else:
            new = ir.Node("com.microsoft", "GatherBlockQuantized", [inputs[0], node.inputs[1], *inputs[1:]],
                          attributes=[ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 1),
                                      ir.AttrInt64("block_size", o.block_size)],
                          num_outputs=1, name=node.name, metadata_props=meta)
            _take_over(model, node, new, names, "q4")
            model.opset_imports.setdefault("com.microsoft", 1)
        if not table.uses() and table.is_initializer() and not table.is_graph_output():
            model.graph.initializers.pop(str(table.name))
        count += 1
        del data
    return count


def _replace(model: ir.Model, node: ir.Node, blocks: _int4.Blocks, shape: tuple[int, ...],
             o: QuantizeWeightsInt4.Options) -> None:
    if o.format == "qdq":
        _replace_with_dq(model, node, blocks, shape)
    else:
        _replace_with_nbits(model, node, blocks, shape, o.accuracy_level)


def _replace_with_dq(model: ir.Model, node: ir.Node, blocks: _int4.Blocks, shape: tuple[int, ...]) -> None:
    """The weight of ``node`` (MatMul) -> ``DequantizeLinear(codes, scales[, zero points], axis=0,
    block_size)``: the same values as MatMulNBits, in standard ONNX (symmetric: int4 / int8 codes, no
    zero point; asymmetric: uint4 / uint8 codes and zero points)."""
    import ml_dtypes

    from onnxq.passes.quantization._common import NameScope, make_initializer

    k, n = int(shape[0]), int(shape[1])
    names = NameScope(model)
    base = str(node.inputs[1].name or node.name)  # type: ignore[union-attr]
    inputs: list[ir.Value]
    if blocks.symmetric:
        # NOTE: symmetric blocks as signed codes without a zero point (TensorRT's weight-only INT4
        # reads int4 with zero point 0 only): code - 2^(bits-1), the same values
        signed = blocks.codes[:k].astype(np.int16) - (1 << (blocks.bits - 1))
        code_type = ml_dtypes.int4 if blocks.bits == 4 else np.int8
        inputs = [make_initializer(model.graph, names, f"{base}_q{blocks.bits}", signed.astype(code_type)),
                  make_initializer(model.graph, names, f"{base}_scales", blocks.scales.astype(np.float32))]
    else:
        code_type = ml_dtypes.uint4 if blocks.bits == 4 else np.uint8
        inputs = [make_initializer(model.graph, names, f"{base}_q{blocks.bits}", blocks.codes[:k].astype(code_type)),
                  make_initializer(model.graph, names, f"{base}_scales", blocks.scales.astype(np.float32)),
                  make_initializer(model.graph, names, f"{base}_zero_points", blocks.zero_points.astype(code_type))]
    dq = ir.Node("", "DequantizeLinear", inputs, num_outputs=1,
                 attributes=[ir.AttrInt64("axis", 0), ir.AttrInt64("block_size", blocks.block)],
                 name=names.fresh(f"{base}_dequantize"), metadata_props={PASS_METADATA_KEY: QuantizeWeightsInt4.name})
    dq.outputs[0].name = names.fresh(f"{base}_dequantized")
    dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    dq.outputs[0].shape = ir.Shape([k, n])
    model.graph.insert_before(node, dq)
    weight = node.inputs[1]
    node.replace_input_with(1, dq.outputs[0])
    if weight is not None and not weight.uses() and weight.is_initializer() and not weight.is_graph_output():
        model.graph.initializers.pop(str(weight.name))


def _replace_with_nbits(model: ir.Model, node: ir.Node, blocks: _int4.Blocks, shape: tuple[int, ...],
                        level: int) -> None:
    """``node`` (MatMul) -> ``com.microsoft.MatMulNBits`` holding ``blocks``."""
    from onnxq.passes.quantization._common import PASS_METADATA_KEY, NameScope, make_initializer

    k, n = int(shape[0]), int(shape[1])
    packed, scales, zeros = _int4.pack(blocks)
    names = NameScope(model)
    base = str(node.inputs[1].name or node.name)  # type: ignore[union-attr]
    inputs = [node.inputs[0], make_initializer(model.graph, names, f"{base}_Q{blocks.bits}", packed),
              make_initializer(model.graph, names, f"{base}_scales", scales)]
    if zeros is not None:
        inputs.append(make_initializer(model.graph, names, f"{base}_zero_points", zeros))
    attrs = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", blocks.bits),
             ir.AttrInt64("block_size", blocks.block), ir.AttrInt64("accuracy_level", level)]
    new = ir.Node("com.microsoft", "MatMulNBits", inputs, attributes=attrs, num_outputs=1,
                  name=node.name, metadata_props={PASS_METADATA_KEY: QuantizeWeightsInt4.name})
    weight = node.inputs[1]
    _take_over(model, node, new, names, "nbits")
    if weight is not None and not weight.uses() and weight.is_initializer() and not weight.is_graph_output():
        model.graph.initializers.pop(str(weight.name))


def _take_over(model: ir.Model, node: ir.Node, new: ir.Node, names: NameScope, suffix: str) -> None:
    """``new`` (inserted before ``node``) takes over its output: readers, graph output name; ``node`` goes."""
    out = node.outputs[0]
    model.graph.insert_before(node, new)
    new.outputs[0].name = names.fresh(f"{out.name}_{suffix}")
    new.outputs[0].type, new.outputs[0].shape = out.type, out.shape
    if out.is_graph_output():
        original = out.name
        out.name = names.fresh(f"{original}_float")
        new.outputs[0].name = original
    out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
    model.graph.remove(node, safe=True)
