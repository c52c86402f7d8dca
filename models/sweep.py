"""Robustness check of the zoo's training: trains each PyTorch model under several seeds
and machine settings and reports the spread of its held-out metric.

Usage: ``python models/sweep.py [--only SCRIPT ...] [--seeds 0 1 2] [--variants default avx2 ...]``.

Float results differ between CPUs (AVX2 vs AVX-512 kernels pick other reduction orders),
so a model whose metric moves several points with the seed is not converged and will
land elsewhere on another machine. Each variant runs in a fresh interpreter, because
torch reads ``ATEN_CPU_CAPABILITY`` (the vector ISA of its own kernels) once at import:

* ``default``: the build's settings (one thread, this CPU's best ISA);
* ``avx2``: torch kernels limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``), as on a CPU without AVX-512;
* ``threads2``: two intra-op threads (another reduction split);
* ``denormal``: ``torch.set_flush_denormal(True)`` (denormals flushed to zero).

Only the PyTorch classifiers are swept (the training step is all that differs between
machines; export and onnxruntime scoring are checked by the build). Metrics are computed
from torch's own outputs with :func:`models.zoo.compute_metric`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # NOTE: run as a script; make ``models`` importable as a package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPTS = (
    "digits_cnn", "lstm_gru", "transformer_digits", "dynamic_transformer",
    "resnet_digits", "mobilenetv2_digits", "crnn_ocr",
)  # fmt: skip
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "threads2": {"ONNXQ_ZOO_THREADS": "2"},
    "denormal": {"ONNXQ_ZOO_FLUSH_DENORMAL": "1"},
}


def score(script: str, seed: int) -> tuple[float, float]:
    """Trains ``models/<script>.py``'s network with ``seed``; returns (metric, train seconds)."""
    import torch

    from models import _torch_utils, zoo

    if os.environ.get("ONNXQ_ZOO_FLUSH_DENORMAL") == "1":
        torch.set_flush_denormal(True)
    module = importlib.import_module(f"models.{script}")
    began = time.perf_counter()
    net = module.train_net(seed)
    seconds = time.perf_counter() - began
    evaluation = module.held_out()
    output = _torch_utils.predict(net, *evaluation.inputs.values())
    return zoo.compute_metric(module.METRIC.kind, output, evaluation.labels), seconds


def _worker(scripts: Sequence[str], seeds: Sequence[int]) -> None:
    for script in scripts:
        for seed in seeds:
            value, seconds = score(script, seed)
            print(
                json.dumps({"script": script, "seed": seed, "metric": value, "seconds": seconds}), flush=True
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["default"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.only, args.seeds)
        return 0
    results: dict[str, list[float]] = {}
    for variant in args.variants:
        command = [sys.executable, "-m", "models.sweep", "--worker", "--only", *args.only]
        command += ["--seeds", *map(str, args.seeds)]
        env = {**os.environ, **VARIANTS[variant]}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]
        )
        assert process.stdout is not None
        for line in process.stdout:
            row = json.loads(line)
            results.setdefault(row["script"], []).append(row["metric"])
            print(
                f"{variant:9s} {row['script']:20s} seed {row['seed']:3d}  {row['metric']:.4f}  "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )
        if process.wait() != 0:
            return process.returncode
    print(f"\n{'script':20s} {'runs':>4s} {'min':>7s} {'median':>7s} {'max':>7s} {'spread':>7s}")
    for script, values in results.items():
        print(
            f"{script:20s} {len(values):4d} {min(values):7.4f} {statistics.median(values):7.4f} "
            f"{max(values):7.4f} {max(values) - min(values):7.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
