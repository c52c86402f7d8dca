"""Builds the benchmark zoo: trains/exports each model and writes it with its data and metric.

Usage: ``python models/build.py [--only NAME ...] [--out DIR] [--force]`` (NAME is a script
or a model name). For every model, ``DIR`` (default ``models/.cache/``) gets
``<name>.onnx``, ``<name>.eval.npz`` (held-out inputs + ``labels``), ``<name>.calib.npz``
(training-split inputs for calibration) and an entry in ``manifest.json`` with the FP32
metric measured by onnxruntime. A script is skipped when its outputs exist and were built
from the same sources and library versions (see :func:`source_hash`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # NOTE: run as a script; make ``models`` importable as a package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx_ir as ir  # noqa: E402

from models import _common, zoo  # noqa: E402

logger = logging.getLogger("models.build")

MODELS_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODELS_DIR.parent
#: Script module -> the zoo entries it produces, in build order (fastest first). Kept here,
#: not read from the scripts, so a cache check does not import torch or TensorFlow.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "digits_cnn": ("digits_cnn", "digits_cnn_qat"),
    "lstm_gru": ("lstm_gru", "lstm_gru_op12"),
    "transformer_digits": ("transformer_digits",),
    "dynamic_transformer": ("dynamic_transformer",),
    "resnet_digits": ("resnet_digits", "resnet_digits_op11"),
    "mobilenetv2_digits": ("mobilenetv2_digits", "mobilenetv2_digits_op13"),
    "crnn_ocr": ("crnn_ocr",),
    "keras_cnn": ("keras_cnn_savedmodel", "keras_cnn_tflite", "keras_cnn_op11"),
    "bert_like": ("bert_like",),
    "byte_lm": ("byte_lm",),
}
#: Files whose content every model depends on besides its own script.
SHARED_SOURCES = ("_common.py", "_export.py", "_torch_utils.py", "build.py", "zoo.py")
#: Converter sources that shape the exported graphs.
CONVERTER_SOURCES = ("onnxq/convert", "onnxq/ir/io.py")
VERSIONED_PACKAGES = (
    "numpy", "onnx", "onnx-ir", "onnxruntime", "onnxscript", "scikit-learn",
    "torch", "tensorflow-cpu", "keras", "tf2onnx",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that influence the built files."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def source_hash(script: str) -> str:
    """SHA-256 over the script, the shared zoo code, the converter code and library versions."""
    digest = hashlib.sha256()
    files = [MODELS_DIR / f"{script}.py", *(MODELS_DIR / name for name in SHARED_SOURCES)]
    for location in CONVERTER_SOURCES:
        path = REPO_ROOT / location
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    for path in files:
        if path.exists():
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return digest.hexdigest()


def resolve(only: Sequence[str] | None) -> list[str]:
    """Script names to build for ``--only`` values (script or entry names), in build order."""
    if not only:
        return list(SCRIPTS)
    wanted = set()
    for name in only:
        script = name if name in SCRIPTS else next((s for s, e in SCRIPTS.items() if name in e), None)
        if script is None:
            known = sorted({*SCRIPTS, *(e for entries in SCRIPTS.values() for e in entries)})
            raise zoo.ZooError(f"unknown zoo model {name!r}; known: {', '.join(known)}")
        wanted.add(script)
    return [s for s in SCRIPTS if s in wanted]


def is_cached(script: str, digest: str, manifest: dict[str, dict[str, Any]], out_dir: Path) -> bool:
    """True when every entry of the script is in the manifest with this hash and its files exist."""
    for name in SCRIPTS[script]:
        info = manifest.get(name)
        if info is None or info.get("source_hash") != digest:
            return False
        if not all((out_dir / f).exists() for f in info["files"].values()):
            return False
    return True


def build(
    only: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Builds the selected scripts (all by default) into ``out_dir``; returns the manifest."""
    out = zoo.zoo_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = zoo.load_manifest(out)
    for script in resolve(only):
        digest = source_hash(script)
        if not force and is_cached(script, digest, manifest, out):
            logger.info("%s: cached (%s)", script, digest[:12])
            continue
        logger.info("%s: building", script)
        start = time.perf_counter()
        module = importlib.import_module(f"models.{script}")
        with tempfile.TemporaryDirectory(prefix=f"zoo-{script}-") as workdir, _torch_state_restored():
            built = module.build(Path(workdir))
        names = tuple(b.name for b in built)
        if names != SCRIPTS[script]:
            raise zoo.ZooError(f"models/{script}.py built {names}, build.SCRIPTS says {SCRIPTS[script]}")
        elapsed = time.perf_counter() - start
        for model in built:
            manifest[model.name] = write_entry(model, out, digest, script, elapsed / len(built))
            metric = manifest[model.name]["metric"]
            logger.info("%s: %s %.4f", model.name, metric["name"], metric["value"])
        write_manifest(manifest, out)
        logger.info("%s: done in %.1f s", script, time.perf_counter() - start)
    return manifest


@contextlib.contextmanager
def _torch_state_restored() -> Iterator[None]:
    """Undoes the scripts' global torch settings (threads, deterministic kernels) afterwards.

    The build also runs inside test sessions; other tests must not inherit one thread.
    """
    torch = sys.modules.get("torch")
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) if torch else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            threads, deterministic = saved or (os.cpu_count() or 1, False)
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


def write_entry(
    model: _common.BuiltModel, out: Path, digest: str, script: str, seconds: float
) -> dict[str, Any]:
    """Writes one model's files, measures it with onnxruntime, returns its manifest entry."""
    from onnxq.ir.io import save_model

    if "labels" in model.held_out.inputs:
        raise zoo.ZooError(f"{model.name}: an input named 'labels' would clash with the labels array")
    files = {
        "onnx": f"{model.name}.onnx",
        "eval": f"{model.name}.eval.npz",
        "calib": f"{model.name}.calib.npz",
    }
    save_model(model.model, out / files["onnx"], external_data=False)
    _common.save_npz(out / files["eval"], {**model.held_out.inputs, "labels": model.held_out.labels})
    _common.save_npz(out / files["calib"], model.calib)

    index = model.metric.output
    output = zoo.run_onnx(out / files["onnx"], model.held_out.inputs)[index]
    value = zoo.compute_metric(model.metric.kind, output, model.held_out.labels)
    metrics = {model.metric.name: value}
    for kind in model.metric.also:
        metrics[kind] = zoo.compute_metric(kind, output, model.held_out.labels)
    for label, evaluation in model.extra_evals.items():
        extra = zoo.run_onnx(out / files["onnx"], evaluation.inputs)[index]
        metrics[label] = zoo.compute_metric(model.metric.kind, extra, evaluation.labels)
    diff = None
    if model.reference is not None:
        diff = float(np.max(np.abs(output.astype(np.float64) - model.reference)))
    return {
        "name": model.name,
        "script": f"models/{script}.py",
        "architecture": model.architecture,
        "source_framework": model.source_framework,
        "route": model.route,
        "converter": model.converter,
        "opset": _default_opset(model.model),
        "params": model.params,
        "dataset": model.dataset,
        "trained": model.trained,
        "metric": {"name": model.metric.name, "kind": model.metric.kind, "output": index, "value": value},
        "metrics": metrics,
        "inputs": [_describe(v) for v in model.model.graph.inputs],
        "outputs": [_describe(v) for v in model.model.graph.outputs],
        "eval_samples": int(len(model.held_out.labels)),
        "calib_samples": int(len(next(iter(model.calib.values())))),
        "max_abs_diff_vs_source": diff,
        "onnx_bytes": (out / files["onnx"]).stat().st_size,
        "onnx_sha256": hashlib.sha256((out / files["onnx"]).read_bytes()).hexdigest(),
        "files": files,
        "notes": model.notes,
        "details": model.details,
        "build_seconds": round(seconds, 1),
        "source_hash": digest,
    }


def _default_opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("")


def _describe(value: ir.Value) -> dict[str, Any]:
    shape = value.shape
    dims = [d if isinstance(d, int) else d.value for d in shape] if shape is not None else None
    dtype = value.dtype.name.lower() if value.dtype is not None else None
    return {"name": value.name, "dtype": dtype, "shape": dims}


def write_manifest(manifest: dict[str, dict[str, Any]], out: Path) -> None:
    """Writes ``manifest.json`` atomically, entries sorted by name."""
    document = {"versions": library_versions(), "models": dict(sorted(manifest.items()))}
    tmp = out / f".{zoo.MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, out / zoo.MANIFEST_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scripts or model names to build")
    parser.add_argument("--out", type=Path, help=f"output folder (default {zoo.DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("-v", "--verbose", action="store_true", help="log training progress")
    parser.add_argument("--table", action="store_true", help="print the README's Markdown table afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("models").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # NOTE: the exporters are chatty (torchvision notes, deprecations, TF C++ banners); a
    # build log should show the zoo's progress. Real failures still raise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # NOTE: torch configures its own loggers when imported (later); this child is left alone.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        manifest = build(args.only, args.out, force=args.force)
    except zoo.ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in (e for s in resolve(args.only) for e in SCRIPTS[s]):
        info = manifest[name]
        print(
            f"{name:24s} {info['metric']['name']:>22s} {info['metric']['value']:.4f}  params {info['params']:>10,d}"
        )
    print(f"total {time.perf_counter() - start:.1f} s -> {zoo.zoo_dir(args.out)}")
    if args.table:
        print(markdown_table(manifest))
    return 0


def markdown_table(manifest: dict[str, dict[str, Any]]) -> str:
    """The models table of models/README.md, from a manifest."""
    rows = [
        "| name | architecture | source | route (converter) | params | data set | FP32 metric | build s |",
        "|---|---|---|---|---:|---|---|---:|",
    ]
    for names in SCRIPTS.values():
        for name in names:
            if name not in manifest:
                continue
            info = manifest[name]
            metric = info["metric"]
            extra = [f"{k} {v:.4f}" for k, v in info["metrics"].items() if k != metric["name"]]
            shown = f"{metric['name']} **{metric['value']:.4f}**" + (
                f" ({', '.join(extra)})" if extra else ""
            )
            rows.append(
                f"| `{name}` | {info['architecture']} | {info['source_framework']} | {info['route']} "
                f"(`{info['converter']}`) | {info['params']:,} | {info['dataset']} | {shown} | "
                f"{info['build_seconds']:.0f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
