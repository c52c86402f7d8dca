"""Conformance of the cleanup passes on onnx's node test cases.

Every node test case that onnx ships (``onnx.backend.test.case.node``) and that
the untouched model passes on onnxruntime CPU is run through each cleanup pass
and through the ``cleanup`` preset. A result must pass ``onnx.checker``, keep
the input/output signature (names, element types, count, order) and still
produce the expected outputs within the case's tolerance.

Cases the untouched model fails on ORT (not implemented, not loadable, expected
outputs that ORT does not reproduce) are *baseline failures*: counted, not run.
Cases in :data:`EXCLUDED` are skipped with the reason given there; library bugs
found so far are listed in :data:`KNOWN_BUGS` (still counted as failures here).
bfloat16, float8 and 4-/2-bit tensors are exchanged with ORT as raw bytes through
an IOBinding, so those cases run too.

Usage::

    python tools/conformance.py                 # table of pass/total per pass
    python tools/conformance.py -p cleanup -v   # one pipeline, list every failure
    python tools/conformance.py -k gather       # only cases whose name contains 'gather'
    python tools/conformance.py --legacy        # also old-opset exports (torch 10-13, tf2onnx 11/13)

``--legacy`` adds real old-opset exports built on the fly by ``tests/_legacy_models.py``
(PyTorch's legacy exporter at opsets 10-13, tf2onnx at 11 and 13); their expected
outputs are the source framework's, so the baseline checks the export as well.

Also imported by ``tests/conformance/test_node_cases.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import importlib.util
import io
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

#: Pipelines checked, one per cleanup pass plus the preset. ``convert-opset`` needs a
#: target opset per case, so it is not part of this check.
PIPELINES: tuple[str, ...] = (
    "infer-shapes",
    "fold-constants",
    "eliminate-dead-code",
    "remove-identity",
    "eliminate-common-subexpressions",
    "topological-sort",
    "cleanup",
    # cleanup + every fusion pass to a fixpoint (onnxq/passes/fusion).
    "optimize",
)

#: Cases the untouched model passes on ORT but that cannot pass after a pass for a
#: documented reason that is not a bug of onnxq. Every entry needs its reason.
#: Key: a case name (all pipelines) or "pipeline:case" (one pipeline).
EXCLUDED: dict[str, str] = {}

KNOWN_BUGS: dict[str, str] = {}


@dataclasses.dataclass
class Case:
    """One onnx node test case, with its data normalized to numpy."""

    name: str
    model: onnx.ModelProto
    data_sets: list[tuple[list[Any], list[Any]]]
    rtol: float
    atol: float


@dataclasses.dataclass
class Outcome:
    """What happened to one case in one pipeline; ``error`` is None when it passed."""

    case: str
    pipeline: str
    error: str | None


@dataclasses.dataclass
class Report:
    """Results of one pipeline over all runnable cases."""

    pipeline: str
    outcomes: list[Outcome]
    excluded: dict[str, str]
    seconds: float

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def passed(self) -> int:
        return sum(o.error is None for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]


# --- cases ------------------------------------------------------------------------


def _normalize(value: Any) -> Any:
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if value is None:
        return None
    return np.asarray(value)


def collect_cases(name_filter: str | None = None) -> list[Case]:
    """All onnx node test cases (sorted by name), data as numpy arrays / lists / None."""
    from onnx.backend.test.case import node

    # NOTE: onnx computes the expected outputs on import; silence its numpy warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = node.collect_testcases()
    cases = []
    for c in sorted(raw, key=lambda c: c.name):
        if name_filter and name_filter not in c.name:
            continue
        assert c.model is not None and c.data_sets is not None, c.name
        data = [([_normalize(x) for x in ins], [_normalize(x) for x in outs]) for ins, outs in c.data_sets]
        cases.append(Case(c.name, c.model, data, float(c.rtol), float(c.atol)))
    return cases


LEGACY_BUILDER = Path(__file__).resolve().parents[1] / "tests" / "_legacy_models.py"


def legacy_cases(name_filter: str | None = None) -> list[Case]:
    """Old-opset exports (needs torch and tensorflow), as cases with the framework's outputs."""
    name = "onnxq_legacy_models"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, LEGACY_BUILDER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    cases = []
    for m in module.build_all():
        if name_filter and name_filter not in m.name:
            continue
        inputs = [m.feeds[n] for n in _feed_names(m.model)]
        cases.append(Case(f"legacy_{m.name}", m.model, [(inputs, list(m.expected))], m.rtol, m.atol))
    return cases


# --- running and comparing --------------------------------------------------------


def _session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return opts


_OPTIONS = _session_options()


def _feed_names(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initializers]


def _is_raw(elem: int | None) -> bool:
    """Element types (bfloat16, float8, 4- and 2-bit) that ORT's numpy interface cannot exchange."""
    if not elem:
        return False
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem).num >= 256  # ml_dtypes types
    except (KeyError, ValueError, TypeError):
        return False


def _raw_type(array: Any) -> int | None:
    """The onnx element type of an ml_dtypes array that must go through raw bytes, else None."""
    if not isinstance(array, np.ndarray) or array.dtype.num < 256:
        return None
    try:
        elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, ValueError, TypeError):
        return None
    return elem if _is_raw(elem) else None


def _output_elem_type(value: onnx.ValueInfoProto) -> int | None:
    return value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else None


def _to_ortvalue(array: np.ndarray, elem: int) -> ort.OrtValue:
    # onnx packs the array the way ORT stores it (little endian, 4-/2-bit types packed).
    raw = onnx.numpy_helper.from_array(array).raw_data
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), elem)
    if value.tensor_size_in_bytes() != len(raw):
        raise ValueError(f"{len(raw)} bytes for a tensor of {value.tensor_size_in_bytes()}")
    ctypes.memmove(value.data_ptr(), raw, len(raw))
    return value


def _from_ortvalue(value: ort.OrtValue, elem: int) -> np.ndarray:
    tensor = onnx.TensorProto(data_type=elem, dims=value.shape())
    tensor.raw_data = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes())
    return onnx.numpy_helper.to_array(tensor)


def _run_bound(
    sess: ort.InferenceSession,
    model: onnx.ModelProto,
    feeds: dict[str, Any],
    expected: Sequence[Any],
) -> list[Any]:
    """Runs through an IOBinding so that bfloat16 / float8 / int4 / int2 tensors go in and out.

    Outputs of those types are written into ORT buffers shaped like the expected outputs.
    """
    binding = sess.io_binding()
    for name, value in feeds.items():
        elem = _raw_type(value)
        if elem is None:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        else:
            binding.bind_ortvalue_input(name, _to_ortvalue(value, elem))
    buffers: dict[int, tuple[ort.OrtValue, int]] = {}
    for i, value in enumerate(model.graph.output):
        elem = _output_elem_type(value)
        want = expected[i] if i < len(expected) else None
        if _is_raw(elem) and isinstance(want, np.ndarray):
            assert elem is not None
            buffers[i] = (ort.OrtValue.ortvalue_from_shape_and_type(list(want.shape), elem), elem)
            binding.bind_ortvalue_output(value.name, buffers[i][0])
        else:
            binding.bind_output(value.name)
    sess.run_with_iobinding(binding)
    return [
        _from_ortvalue(*buffers[i]) if i in buffers else value.numpy()
        for i, value in enumerate(binding.get_outputs())
    ]


def run_ort(
    model: onnx.ModelProto, input_names: Sequence[str], data_sets: Sequence[Any], case: Case
) -> str | None:
    """Runs every data set of ``case`` on ``model``; the first problem as text, or None."""
    try:
        sess = ort.InferenceSession(model.SerializeToString(), _OPTIONS, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  # ORT raises its own assorted exception types
        return f"onnxruntime cannot load the model: {_first_line(e)}"
    output_names = [o.name for o in model.graph.output]
    raw_outputs = any(_is_raw(_output_elem_type(o)) for o in model.graph.output)
    for i, (inputs, expected) in enumerate(data_sets):
        feeds = dict(zip(input_names, inputs, strict=False))
        try:
            if raw_outputs or any(_raw_type(v) is not None for v in feeds.values()):
                got = _run_bound(sess, model, feeds, expected)
            else:
                got = sess.run(output_names, feeds)
        except Exception as e:  # noqa: BLE001
            return f"onnxruntime cannot run data set {i}: {_first_line(e)}"
        problem = compare_outputs(expected, got, case.rtol, case.atol)
        if problem is not None:
            return f"data set {i}: {problem}"
    return None


def compare_outputs(expected: Sequence[Any], got: Sequence[Any], rtol: float, atol: float) -> str | None:
    """Mirrors onnx's ``assert_similar_outputs``: shapes, dtypes, values (NaN == NaN)."""
    if len(expected) != len(got):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        problem = _compare_one(want, have, rtol, atol)
        if problem is not None:
            return f"output {i}: {problem}"
    return None


def _compare_one(want: Any, have: Any, rtol: float, atol: float) -> str | None:
    if want is None or have is None:
        return None if want is None and have is None else f"got {type(have).__name__}, expected {want!r}"
    if isinstance(want, list):
        if not isinstance(have, (list, tuple)):
            return f"got {type(have).__name__}, expected a sequence"
        if len(have) != len(want):
            return f"sequence of {len(have)}, expected {len(want)}"
        for j, (w, h) in enumerate(zip(want, have, strict=True)):
            problem = _compare_one(w, h, rtol, atol)
            if problem is not None:
                return f"[{j}] {problem}"
        return None
    if isinstance(have, (list, tuple)):
        return "got a sequence, expected a tensor"
    have = np.asarray(have)
    if have.shape != want.shape:
        return f"shape {list(have.shape)}, expected {list(want.shape)}"
    if want.dtype == object or want.dtype.kind in "US":
        return None if np.array_equal(have.astype(object), want.astype(object)) else "strings differ"
    if have.dtype != want.dtype:
        return f"dtype {have.dtype}, expected {want.dtype}"
    if want.dtype.kind in "biu":
        return None if np.array_equal(have, want) else "integers differ"
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2**-6)
    w = want.astype(np.float64) if want.dtype.kind != "c" else want.astype(np.complex128)
    h = have.astype(np.float64) if have.dtype.kind != "c" else have.astype(np.complex128)
    close = np.isclose(h, w, rtol=rtol, atol=atol, equal_nan=True)
    if np.all(close):
        return None
    bad = np.argwhere(~close)
    first = tuple(int(i) for i in bad[0])
    return (
        f"{len(bad)} of {w.size} values differ (rtol={rtol}, atol={atol}); "
        f"first at {list(first)}: got {have[first]!r}, expected {want[first]!r}"
    )


def baseline(case: Case) -> str | None:
    """Runs the untouched model; None when ORT reproduces the expected outputs."""
    return run_ort(case.model, _feed_names(case.model), case.data_sets, case)


# --- the check ----------------------------------------------------------------------


def _type_text(t: onnx.TypeProto) -> str:
    """A type without its shape: tensor(1), seq(tensor(1)), optional(...), map(...)."""
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({t.tensor_type.elem_type})"
    if kind == "sparse_tensor_type":
        return f"sparse({t.sparse_tensor_type.elem_type})"
    if kind == "sequence_type":
        return f"seq({_type_text(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(t.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({t.map_type.key_type},{_type_text(t.map_type.value_type)})"
    return str(kind)


def signature(model: onnx.ModelProto) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(inputs, outputs) as (name, type without shape) in order; initializers are not inputs."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [(v.name, _type_text(v.type)) for v in model.graph.input if v.name not in initializers]
    outputs = [(v.name, _type_text(v.type)) for v in model.graph.output]
    return inputs, outputs


def check_pipeline(case: Case, pipeline_text: str, registry: Any) -> str | None:
    """Applies the pipeline to a fresh copy of the case's model; the first problem, or None.

    Besides checker, signature and outputs, a pass that reports ``modified=False`` must
    leave the serialized model byte-identical; such a result is not run again on ORT
    when it is also byte-identical to the case's model (it is the baseline).
    """
    from onnxq.framework.pipeline import apply

    try:
        model = ir.serde.deserialize_model(case.model)
        untouched = ir.serde.serialize_model(ir.serde.deserialize_model(case.model)).SerializeToString()
        pipeline = registry.parse(pipeline_text)
        # NOTE: onnx_ir / onnxscript print to stdout on some models; keep the report readable.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = apply(model, pipeline)
        proto = ir.serde.serialize_model(model)
    except Exception as e:  # noqa: BLE001  # any failure of the pass is what we report
        return f"pass raised {type(e).__name__}: {_first_line(e)}"
    data = proto.SerializeToString()
    if not result.modified and data != untouched:
        return "pass reported modified=False but changed the model"
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001
        return f"onnx.checker rejects the result: {_first_line(e)}"
    before, after = signature(case.model), signature(proto)
    if before[0] != after[0]:
        return f"input signature changed: {before[0]} -> {after[0]}"
    if before[1] != after[1]:
        return f"output signature changed: {before[1]} -> {after[1]}"
    if data == case.model.SerializeToString():
        return None  # the very model the baseline ran
    # Feed by the original input names (the signature check above guarantees they still exist).
    return run_ort(proto, [name for name, _ in before[0]], case.data_sets, case)


def runnable_cases(cases: Iterable[Case]) -> tuple[list[Case], dict[str, str]]:
    """(cases whose untouched model passes on ORT, {name: reason} of the baseline failures)."""
    ok, failed = [], {}
    for case in cases:
        problem = baseline(case)
        if problem is None:
            ok.append(case)
        else:
            failed[case.name] = problem
    return ok, failed


def excluded_reason(pipeline: str, case: str) -> str | None:
    return EXCLUDED.get(f"{pipeline}:{case}") or EXCLUDED.get(case)


def run_pipeline(pipeline: str, cases: Sequence[Case], registry: Any = None) -> Report:
    """Runs one pipeline over the (runnable) cases, honouring :data:`EXCLUDED`."""
    from onnxq.framework.registry import PassRegistry

    registry = registry if registry is not None else PassRegistry.default()
    start = time.perf_counter()
    outcomes, excluded = [], {}
    for case in cases:
        reason = excluded_reason(pipeline, case.name)
        if reason is not None:
            excluded[case.name] = reason
            continue
        outcomes.append(Outcome(case.name, pipeline, check_pipeline(case, pipeline, registry)))
    return Report(pipeline, outcomes, excluded, time.perf_counter() - start)


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__


# --- command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-p", "--pipeline", action="append", help="pipeline(s) to check (default: all)")
    parser.add_argument("-k", dest="name_filter", help="only cases whose name contains this text")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every failure")
    parser.add_argument("--baseline", action="store_true", help="list the baseline failures too")
    parser.add_argument("--legacy", action="store_true", help="also old-opset torch/tf2onnx exports")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cases = collect_cases(args.name_filter)
    if args.legacy:
        cases += legacy_cases(args.name_filter)
    runnable, base_failed = runnable_cases(cases)
    print(
        f"{len(cases)} cases; {len(runnable)} pass untouched on onnxruntime, "
        f"{len(base_failed)} baseline failures ({time.perf_counter() - start:.1f} s)"
    )
    if args.baseline:
        for name, reason in sorted(base_failed.items()):
            print(f"  baseline {name}: {reason}")
    reports = [run_pipeline(p, runnable) for p in (args.pipeline or PIPELINES)]
    print(f"\n{'pipeline':34s} {'pass':>6s} {'total':>6s} {'excluded':>9s} {'seconds':>8s}")
    for r in reports:
        print(f"{r.pipeline:34s} {r.passed:6d} {r.total:6d} {len(r.excluded):9d} {r.seconds:8.1f}")
    failed = [f for r in reports for f in r.failures]
    if failed and args.verbose:
        print()
        for f in failed:
            known = " [known bug]" if f"{f.pipeline}:{f.case}" in KNOWN_BUGS else ""
            print(f"FAIL {f.pipeline} {f.case}{known}: {f.error}")
    elif failed:
        known = sum(f"{f.pipeline}:{f.case}" in KNOWN_BUGS for f in failed)
        print(f"\n{len(failed)} failures ({known} known bugs); rerun with -v to list them")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
