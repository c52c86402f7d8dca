"""Run a command on onnxruntime's AVX2 kernels, on a machine whose CPU has AVX-512 VNNI.

Usage: ``python tools/avx2_kernels.py COMMAND [ARG ...]``, for instance
``python tools/avx2_kernels.py python tools/bench_recovery.py --methods onnxq-guard``.

The command runs with ``tools/avx2_kernels/cpuid_mask.c`` preloaded (built with ``gcc`` into a
temporary folder, removed afterwards): CPUID answers without AVX-512, VNNI and AMX, so
onnxruntime's MLAS (and numpy) dispatch to the same kernels as on an AVX2-only CPU, at native
speed. ``ONNXQ_CPU=avx2`` is set as well, so ``onnxq`` quantizes for AVX2 (7-bit weights), as its
detection would on such a CPU. Why: the issue targets (1.5x on AVX2, 2.0x on VNNI) can then be
measured on one machine, in one session. What it does not give: an AVX2 CPU's own caches,
clock and port layout; a figure from it is labelled "AVX2 kernels on <this CPU>".

Needs Linux on x86-64 with CPUID faulting (the ``cpuid_fault`` flag in /proc/cpuinfo; Intel
CPUs since Ivy Bridge, and KVM guests on them) and ``gcc``. Exits 2 with one line otherwise;
otherwise exits with the command's status (128 + N when signal N killed it).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "avx2_kernels" / "cpuid_mask.c"


def unavailable(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """Why the AVX2 kernels cannot be forced here, or None when they can.

    On this machine (no arguments) the library is also built and tried once on ``true``.
    """
    reason = _static_reason(cpuinfo, machine)
    if reason is None and cpuinfo is None and machine is None:
        return _here()
    return reason


def _static_reason(cpuinfo: str | None, machine: str | None) -> str | None:
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {machine or platform.machine()}"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "needs Linux (/proc/cpuinfo is not readable)"
    flags = next(
        (line.partition(":")[2].split() for line in cpuinfo.splitlines() if line.startswith("flags")),
        [],
    )
    if "cpuid_fault" not in flags:
        return "this CPU (or its hypervisor) has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)"
    if shutil.which("gcc") is None:
        return "needs gcc to build tools/avx2_kernels/cpuid_mask.c"
    return None


@functools.cache
def _here() -> str | None:
    with tempfile.TemporaryDirectory(prefix="onnxq-avx2-") as folder:
        return prepared(Path(folder))[1]


def prepared(folder: Path) -> tuple[Path | None, str | None]:
    """The library built into ``folder`` and tried on ``true``, or why not (gcc failed, or a seccomp
    filter or hypervisor refuses CPUID faulting at run time)."""
    try:
        library = build(folder)
    except subprocess.CalledProcessError as error:
        last = (error.stderr or "").strip().splitlines()[-1:] or ["no message"]
        return None, f"gcc failed on {SOURCE}: {last[0]}"
    if subprocess.run(["true"], env=environment(library), capture_output=True).returncode != 0:
        return None, "CPUID faulting is refused at run time (arch_prctl ARCH_SET_CPUID failed)"
    return library, None


def build(folder: Path) -> Path:
    """Compile the preload library into ``folder``; its path."""
    library = folder / "cpuid_mask.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-o", str(library), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
        text=True,
    )
    return library


def environment(library: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (the current environment) with the library preloaded and ``ONNXQ_CPU=avx2``."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    env["ONNXQ_CPU"] = "avx2"
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("usage: python tools/avx2_kernels.py COMMAND [ARG ...]")
        return 0 if argv else 2
    with tempfile.TemporaryDirectory(prefix="onnxq-avx2-") as folder:
        library, reason = None, _static_reason(None, None)
        if reason is None:
            library, reason = prepared(Path(folder))
        if library is None:
            print(f"avx2_kernels: cannot force AVX2 kernels: {reason}", file=sys.stderr)
            return 2
        try:
            code = subprocess.run(argv, env=environment(library)).returncode
        except FileNotFoundError:
            print(f"avx2_kernels: command not found: {argv[0]}", file=sys.stderr)
            return 2
        return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
