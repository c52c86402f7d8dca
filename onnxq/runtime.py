"""Running models on onnxruntime CPU: sessions from onnx_ir models, sample inputs, comparison.

Ground floor (imports only onnxq.errors): used by the framework's numeric checks, the converters,
validation and tests.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OptionError

Feeds = dict[str, np.ndarray]


def session(model: ir.Model | str | os.PathLike[str], *, optimize: bool = False) -> ort.InferenceSession:
    """A CPU InferenceSession for an in-memory model or a file."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if isinstance(model, ir.Model):
        data = ir.serde.serialize_model(model).SerializeToString()
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(os.fspath(model), opts, providers=["CPUExecutionProvider"])


def run(model: ir.Model | str | os.PathLike[str], feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Runs the model once; returns outputs by name."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def random_inputs(model: ir.Model, *, seed: int = 0, dim_values: Mapping[str, int] | None = None) -> Feeds:
    """Deterministic random feeds matching the model's inputs; symbolic dims become 1 (or dim_values)."""
    rng = np.random.default_rng(seed)
    dim_values = dim_values or {}
    initializers = set(model.graph.initializers)
    feeds: Feeds = {}
    for value in model.graph.inputs:
        if value.name in initializers or value.name is None:
            continue
        if value.dtype is None or value.shape is None:
            raise OptionError(f"input '{value.name}' has no static type/shape; supply sample inputs")
        shape = [
            d if isinstance(d, int) else dim_values.get(str(d.value), 1) if d.value else 1
            for d in value.shape
        ]
        dtype = value.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            raise OptionError(f"input '{value.name}' has type {value.dtype}; supply sample inputs")
    return feeds


def select_inputs(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """The feeds the model takes (extra arrays such as labels are dropped); errors name missing inputs."""
    initializers = set(model.graph.initializers)
    names = [v.name for v in model.graph.inputs if v.name not in initializers]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise OptionError(
            f"sample inputs lack {', '.join(repr(m) for m in missing)} (have: {', '.join(sorted(feeds))})"
        )
    return {n: np.asarray(feeds[n]) for n in names if n is not None}


def load_inputs(path: str | os.PathLike[str]) -> Feeds:
    """Sample inputs from an .npz file (keys = input names) or a folder of <input>.npy files."""
    path = Path(path)
    try:
        if path.is_dir():
            return {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise OptionError(f"{path}: cannot read sample inputs ({e})") from None


@dataclasses.dataclass(frozen=True)
class Mismatch:
    output: str
    max_abs_diff: float
    detail: str

    def __str__(self) -> str:
        return f"output '{self.output}': {self.detail}"


def compare(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list[Mismatch]:
    """Outputs that differ in name, shape, dtype or value beyond ``atol + rtol*|expected|``."""
    problems = []
    for name, want in expected.items():
        if name not in actual:
            problems.append(Mismatch(name, float("inf"), "missing"))
            continue
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(
                Mismatch(name, float("inf"), f"{got.dtype}{list(got.shape)} != {want.dtype}{list(want.shape)}")
            )
            continue
        if want.dtype.kind in "fc":
            wide = np.complex128 if want.dtype.kind == "c" else np.float64
            w, g = want.astype(wide), got.astype(wide)
            same = (w == g) | (np.isnan(w) & np.isnan(g))  # equal infinities and NaNs match
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.where(same, 0.0, np.abs(g - w))
            diff = np.nan_to_num(diff, nan=np.inf, posinf=np.inf)
            worst = float(np.max(diff)) if diff.size else 0.0
            ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(w))))
        else:
            ok = bool(np.array_equal(got, want))
            worst = 0.0 if ok else float("inf")
        if not ok:
            problems.append(Mismatch(name, worst, f"max abs diff {worst:.3g} (rtol={rtol}, atol={atol})"))
    return problems
