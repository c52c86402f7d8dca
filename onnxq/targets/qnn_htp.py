"""Running a model on Qualcomm's HTP (the Snapdragon NPU) as simulated on x86 by ``onnxruntime-qnn``.

The ``onnxruntime-qnn`` wheel (``pip install onnxq[qnn]``) ships the QNN execution provider as an
onnxruntime plugin together with ``libQnnHtp.so``, whose x86 build simulates the HTP's integer
arithmetic. What this module measures on it, for ``--target qnn``:

- offload: which nodes the QNN EP takes (``session.record_ep_graph_assignment_info``), and the
  ones left to the CPU EP, by name and op type;
- whether the model loads with ``session.disable_cpu_ep_fallback=1``, the way a device build
  without a CPU fallback would run it;
- the HTP's own outputs, so fidelity is judged on the NPU's arithmetic, not onnxruntime CPU's.

Without the wheel nothing here runs; :func:`available` says so and callers report that offload was
not measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import first_line
from onnxq.runtime import session_bytes, session_options

EP_NAME = "QNNExecutionProvider"
#: How to install the backend when it is missing.
INSTALL_HINT = "pip install 'onnxq[qnn]' (the onnxruntime-qnn wheel with the HTP simulator)"


def available() -> bool:
    """Whether the QNN EP and its HTP backend can be loaded here."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return _device() is not None


def _device() -> object | None:
    import onnxruntime_qnn

    # NOTE: registering twice raises; a device listed already means this process registered it.
    if not any(d.ep_name == EP_NAME for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        except Exception:  # noqa: BLE001  # onnxruntime raises its own types; None means unavailable
            return None
    return next((d for d in ort.get_ep_devices() if d.ep_name == EP_NAME), None)


@dataclasses.dataclass
class Offload:
    """Where a model's nodes ran with the QNN EP first and the CPU EP as fallback."""

    nodes: int
    on_qnn: int
    #: (node name, op type) of every node the CPU EP took, but the boundary conversions.
    fallbacks: list[tuple[str, str]]
    #: The model loads with the CPU fallback disabled (every node on the HTP).
    loads_without_fallback: bool
    #: Why it does not, from onnxruntime (first line).
    refusal: str | None = None
    #: QuantizeLinear of a graph input and DequantizeLinear of a graph output left to the CPU EP:
    #: the float <-> uint8 conversions at the model's edge, which onnxruntime runs outside the HTP
    #: graph even with the CPU fallback disabled.
    boundary: int = 0

    @property
    def complete(self) -> bool:
        return self.loads_without_fallback and not self.fallbacks

    def summary(self) -> str:
        edge = f" (+{self.boundary} input/output Q/DQ on the CPU)" if self.boundary else ""
        head = f"{self.on_qnn}/{self.nodes} nodes on QNN (HTP){edge}"
        if self.complete:
            return head + ", loads with the CPU fallback disabled"
        by_op: dict[str, int] = {}
        for _, op in self.fallbacks:
            by_op[op] = by_op.get(op, 0) + 1
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(by_op.items(), key=lambda x: -x[1]))
        refused = f"; refused without CPU fallback: {self.refusal}" if self.refusal else ""
        return f"{head}; on CPU: {ops or 'none'}{refused}"


def _options(external_folder: str | None = None, config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    """Session options with the QNN EP on the simulated HTP first (the CPU EP behind it)."""
    import onnxruntime_qnn

    device = _device()
    if device is None:
        raise RuntimeError(f"the QNN execution provider is not installed: {INSTALL_HINT}")
    opts = session_options(optimize=False, external_folder=external_folder)
    opts.add_provider_for_devices([device], {"backend_path": onnxruntime_qnn.get_qnn_htp_path()})
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    return opts


def htp_session(model: ir.Model, *, fallback: bool = True, record: bool = False,
                config: Mapping[str, str] | None = None) -> ort.InferenceSession:
    """A session on the simulated HTP (``fallback``: nodes QNN refuses go to the CPU EP).

    Raises:
        RuntimeError: the backend is missing, or onnxruntime refuses the model (without fallback:
            a node the HTP cannot run).
    """
    entries = dict(config or {})
    if not fallback:
        entries["session.disable_cpu_ep_fallback"] = "1"
    if record:
        entries["session.record_ep_graph_assignment_info"] = "1"
    data, folder = session_bytes(model)
    opts = _options(folder, entries)
    with _stdout_to_stderr():
        return ort.InferenceSession(data, opts)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The HTP backend prints a line to file descriptor 1 when it loads; it goes to stderr instead,
    so ``--json`` output stays one JSON document."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def offload(model: ir.Model) -> Offload:
    """Measures which nodes run on the HTP, and whether the model loads without the CPU fallback."""
    sess = htp_session(model, record=True)
    edge = _boundary_nodes(model)
    on_qnn = boundary = 0
    fallbacks: list[tuple[str, str]] = []
    for subgraph in sess.get_provider_graph_assignment_info():
        for node in subgraph.get_nodes():
            if subgraph.ep_name == EP_NAME:
                on_qnn += 1
            elif node.name in edge:
                boundary += 1
            else:
                fallbacks.append((node.name, node.op_type))
    del sess
    refusal = None
    try:
        htp_session(model, fallback=False)
    except Exception as e:  # noqa: BLE001  # onnxruntime raises its own exception types
        refusal = first_line(e)
    return Offload(on_qnn + len(fallbacks), on_qnn, fallbacks, refusal is None, refusal, boundary)


def _boundary_nodes(model: ir.Model) -> set[str]:
    """Names of the QuantizeLinear nodes of graph inputs and DequantizeLinear nodes of graph outputs."""
    inputs = {id(v) for v in model.graph.inputs}
    outputs = {id(v) for v in model.graph.outputs}
    return {node.name or "" for node in model.graph
            if (node.op_type == "QuantizeLinear" and node.inputs and id(node.inputs[0]) in inputs)
            or (node.op_type == "DequantizeLinear" and any(id(o) in outputs for o in node.outputs))}


@dataclasses.dataclass
class ContextModel:
    """An EP-context model the QNN EP wrote, checked by loading it back."""

    path: str
    size: int
    #: Largest difference between its outputs and the source model's on the HTP, over the feeds.
    max_abs_diff: float

    def summary(self) -> str:
        return (f"EP-context model {self.path} ({self.size / 2**20:.1f} MB, the compiled HTP graph inside): "
                f"loads on QNN, max abs difference to the QDQ model's HTP outputs {self.max_abs_diff:.3g}")


def write_context(model: ir.Model, path: str | os.PathLike[str],
                  feeds: Sequence[Mapping[str, np.ndarray]]) -> ContextModel:
    """Writes the model compiled for the HTP as an EP-context model (``ep.context_enable``).

    A device loads it without compiling the graph again. Written to a temporary name beside
    ``path`` and renamed into place once it has loaded on QNN and given the QDQ model's outputs.

    Raises:
        RuntimeError: the backend is missing, or the written model does not load on QNN.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}.onnx")
    try:
        source = htp_session(model, config={"ep.context_enable": "1", "ep.context_embed_mode": "1",
                                            "ep.context_file_path": os.fspath(temp)})
        with _stdout_to_stderr():
            loaded = ort.InferenceSession(os.fspath(temp), _options())
        names = [o.name for o in source.get_outputs()]
        diff = 0.0
        for feed in feeds:
            for a, b in zip(source.run(names, dict(feed)), loaded.run(names, dict(feed)), strict=True):
                diff = max(diff, float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))))
        del source, loaded
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return ContextModel(os.fspath(target), target.stat().st_size, diff)


def run(model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every output of ``model`` on the simulated HTP (CPU fallback allowed), per feed."""
    sess = htp_session(model)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, dict(f)), strict=True)) for f in feeds]


__all__ = ["EP_NAME", "INSTALL_HINT", "ContextModel", "Offload", "available", "htp_session", "offload", "run",
           "write_context"]
