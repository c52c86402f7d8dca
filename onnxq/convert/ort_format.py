"""ORT format (``.ort``): the model file onnxruntime's mobile packages and minimal builds load.

onnxruntime's own converter does the conversion (``onnxruntime.tools.convert_onnx_models_to_ort``:
a CPU session at ``ORT_ENABLE_ALL`` that saves its optimized graph with
``session.save_model_format=ORT``); written by hand here is only what a pipeline needs around
it: one output file written atomically, the operator config of a reduced build kept only when
asked for, and a check that the ``.ort`` file loads and gives the outputs of the ONNX model it
came from (shapes, dtypes, values at float tolerance; the same session settings on both sides).

Platforms (the converter's ``target_platform``): ``arm`` (phones: the x86-only NCHWc layout is not
baked in, and signed-int8 QDQ runs on int8 kernels, ``session.qdqisint8allowed=1``) or ``amd64``.
Styles: ``fixed`` bakes every optimization in (CPU EP); ``runtime`` saves only the basic ones and
records the others to be replayed when the nodes are not taken by a compiling EP (NNAPI, CoreML),
which is what onnxruntime advises for those EPs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import ConversionError, OptionError, first_line
from onnxq.ir.io import check_output_path, load_model

PLATFORMS = ("arm", "amd64")
STYLES = ("fixed", "runtime")
#: Float tolerance of the load-back check (relative, and absolute as a share of the largest output).
RTOL = 1e-4
ATOL = 1e-5


@dataclasses.dataclass
class OrtExport:
    """What :func:`export_ort` wrote and checked."""

    output: Path
    size: int
    platform: str
    style: str
    #: Where the reduced-build operator config was written, or None.
    config: Path | None
    #: ``domain;opset`` -> operators the model needs (the config's content).
    operators: dict[str, list[str]]
    #: Largest absolute difference between the ``.ort`` and ``.onnx`` outputs on the check feed.
    max_abs_diff: float
    #: What the check ran on: ``generated`` (seed 0, symbolic dims 1) or ``given``.
    inputs: str

    def lines(self) -> list[str]:
        ops = sum(len(v) for v in self.operators.values())
        out = [f"wrote {self.output} ({self.size / 1e6:.3f} MB, ORT format, {self.platform}, {self.style} "
               f"optimizations)",
               f"checked: loads in onnxruntime {_ort_version()} and matches the ONNX model's outputs on "
               f"{self.inputs} inputs (max abs diff {self.max_abs_diff:.3g})",
               f"operators: {ops} in {len(self.operators)} domain/opset set(s)"]
        if self.config is not None:
            out.append(f"reduced-build operator config: {self.config} (build onnxruntime with "
                       f"--include_ops_by_config {self.config.name})")
        return out

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["output"], doc["config"] = str(self.output), None if self.config is None else str(self.config)
        doc["onnxruntime"] = _ort_version()
        return doc


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def export_ort(model_path: str | os.PathLike[str], output: str | os.PathLike[str], *, platform: str = "arm",
               style: str = "fixed", reduced_ops_config: str | os.PathLike[str] | None = None,
               inputs: Mapping[str, np.ndarray] | None = None) -> OrtExport:
    """Converts an ONNX file to ORT format, checks it, and writes it to ``output`` atomically.

    Args:
        model_path: The .onnx file (never modified; external data is read from its folder).
        output: The .ort file to write.
        platform: ``arm`` or ``amd64`` (see the module docstring).
        style: ``fixed`` or ``runtime`` optimizations.
        reduced_ops_config: Also write the operator config of a reduced onnxruntime build here.
        inputs: Feeds for the load-back check (default: generated, symbolic dims 1).

    Raises:
        OptionError: A bad platform, style or output name.
        ModelLoadError: The input is not a readable ONNX model.
        ConversionError: onnxruntime cannot load or convert it, or the ``.ort`` outputs differ.
    """
    source, output = Path(model_path), Path(output)
    if platform not in PLATFORMS:
        raise OptionError(f"--platform {platform!r}: choose one of {', '.join(PLATFORMS)}")
    if style not in STYLES:
        raise OptionError(f"--style {style!r}: choose one of {', '.join(STYLES)}")
    if output.suffix.lower() != ".ort":
        raise OptionError(f"{output}: an ORT-format file must end in .ort (onnxruntime picks the format by it)")
    load_model(source)  # a clear one-line error for a bad input, before onnxruntime sees it
    folder = check_output_path(output, source=source)
    config_out = Path(reduced_ops_config) if reduced_ops_config is not None else None
    if config_out is not None:
        check_output_path(config_out, source=source)
    tmp = Path(tempfile.mkdtemp(prefix=".onnxq-tmp-", dir=folder)).resolve()
    try:
        _convert(_stage(source, tmp), tmp, style=style, platform=platform)
        written = sorted(tmp.rglob("*.ort"))
        configs = sorted(tmp.rglob("*.config"))
        if len(written) != 1:
            raise ConversionError(f"{source}: the ORT converter wrote {len(written)} .ort files, expected one")
        operators = _read_config(configs[0]) if configs else {}
        diff, described = _check(source, written[0], platform=platform, style=style, inputs=inputs)
        os.replace(written[0], output)
        if config_out is not None and configs:
            # NOTE: the converter names the temporary file it read; the config names the output
            text = configs[0].read_text().replace(str(written[0].resolve()), str(output))
            configs[0].write_text(text)
            os.replace(configs[0], config_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return OrtExport(output, output.stat().st_size, platform, style, config_out if configs else None, operators,
                     diff, described)


#: The conversion, in a child process: onnxruntime's ORT-format writer orders some tables by hash
#: maps seeded from memory addresses (measured: 6 distinct files from 6 conversions of one model in
#: one process, even with optimizations off). A fresh process with address randomization off
#: (Linux ``personality(ADDR_NO_RANDOMIZE)``), given the same paths, writes the same bytes.
_CONVERT = r"""
import contextlib, io, logging, pathlib, sys
logging.disable(logging.INFO)
from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
style = OptimizationStyle.Fixed if sys.argv[2] == "fixed" else OptimizationStyle.Runtime
try:
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(pathlib.Path(sys.argv[1]), output_dir=pathlib.Path("out"),
                                   optimization_styles=[style], target_platform=sys.argv[3])
except Exception as e:
    text = str(e).strip().splitlines()
    sys.stderr.write("onnxq-convert-error: " + (text[0] if text else type(e).__name__) + "\n")
    sys.exit(3)
"""
_ADDR_NO_RANDOMIZE = 0x0040000


def _fixed_layout() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes

    ctypes.CDLL(None, use_errno=True).personality(_ADDR_NO_RANDOMIZE)


def _stage(source: Path, folder: Path) -> Path:
    """A copy of the model, weights inline, in ``folder/in/model.onnx``: the converter writes temporary
    folders beside the model it reads (``runtime`` style) and converts only ``*.onnx`` names."""
    import onnx

    staged = folder / "in" / "model.onnx"
    staged.parent.mkdir()
    proto = onnx.load(os.fspath(source))
    if proto.ByteSize() > 2**31 - 1:
        onnx.save(proto, os.fspath(staged), save_as_external_data=True, location="model.onnx.data")
    else:
        onnx.save(proto, os.fspath(staged))
    return staged


def _convert(source: Path, folder: Path, *, style: str, platform: str) -> None:
    """onnxruntime's converter on ``source``, writing into ``folder/out`` (see ``_CONVERT``)."""
    proc = subprocess.run([sys.executable, "-c", _CONVERT, os.fspath(source.resolve()), style, platform],
                          cwd=folder, capture_output=True, text=True, check=False,
                          preexec_fn=_fixed_layout if sys.platform == "linux" else None)  # noqa: PLW1509
    if proc.returncode != 0:
        found = [line for line in proc.stderr.splitlines() if line.startswith("onnxq-convert-error: ")]
        why = found[-1].split(": ", 1)[1] if found else (proc.stderr.strip().splitlines() or ["it crashed"])[-1]
        raise ConversionError(f"{source}: onnxruntime cannot convert it to ORT format: {why}")


def _read_config(path: Path) -> dict[str, list[str]]:
    """``domain;opset;op1,op2`` lines of a reduced-build config (comments skipped)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, ops = (line.split(";") + ["", ""])[:3]
        names = [op.split("{")[0].strip() for op in ops.split(",") if op.strip()]
        found.setdefault(f"{domain};{opset}", []).extend(names)
    return found


def _session_options(platform: str, *, ort_format: bool, style: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.qdqisint8allowed", "1" if platform == "arm" else "0")
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
        if style == "runtime":
            so.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def _check(source: Path, ort_file: Path, *, platform: str, style: str,
           inputs: Mapping[str, np.ndarray] | None) -> tuple[float, str]:
    """Max abs difference of the ``.ort`` outputs against the ``.onnx`` ones; raises when they differ."""
    import onnxruntime as ort

    from onnxq import runtime
    from onnxq.validation.bench import feeds_for

    disabled = ["NchwcTransformer"] if platform != "amd64" else None
    try:
        loaded = ort.InferenceSession(os.fspath(ort_file), _session_options(platform, ort_format=True, style=style),
                                      providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{ort_file.name}: the converted file does not load in onnxruntime: {first_line(e)}") from None
    reference = ort.InferenceSession(os.fspath(source), _session_options(platform, ort_format=False, style=style),
                                     providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    feeds = feeds_for(reference, inputs, where=str(source))
    names = [o.name for o in reference.get_outputs()]
    want = dict(zip(names, reference.run(names, feeds), strict=True))
    got = dict(zip(names, loaded.run(names, feeds), strict=True))
    largest = max((float(np.max(np.abs(w))) for w in want.values() if w.dtype.kind == "f" and w.size), default=1.0)
    problems = runtime.compare(want, got, rtol=RTOL, atol=ATOL * largest)
    if problems:
        raise ConversionError(f"{source}: the ORT-format model's outputs differ from the ONNX model's: {problems[0]}")
    diff = max((float(np.max(np.abs(want[n].astype(np.float64) - got[n].astype(np.float64))))
                for n in names if want[n].dtype.kind in "fiu" and want[n].size), default=0.0)
    return diff, "given" if inputs is not None else "generated (seed 0, symbolic dims 1)"
