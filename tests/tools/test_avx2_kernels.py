"""tools/avx2_kernels.py: a command runs with AVX-512 / VNNI hidden from CPUID, ONNXQ_CPU=avx2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))  # NOTE: tools/ is a folder of scripts, not installed

import avx2_kernels  # noqa: E402

PROBE = """
import json, os
import numpy as np
import onnx, onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as features
from onnx import helper, TensorProto
from onnxq.targets.ort_cpu import ort_cpu_target
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.eye(8, dtype=np.float32).ravel())
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
feed = np.arange(32, dtype=np.float32).reshape(4, 8)
print(json.dumps({
    "avx2": bool(features["AVX2"]),
    "avx512f": bool(features["AVX512F"]),
    "onnxq_cpu": ort_cpu_target().cpu,
    "same": bool((session.run(None, {"x": feed})[0] == feed).all()),
}))
"""


def test_a_command_sees_avx2_without_avx512_and_onnxq_quantizes_for_avx2() -> None:
    run = subprocess.run(
        # NOTE: with faulthandler on, as under pytest: its SIGSEGV handler must not take CPUID's
        [sys.executable, str(TOOLS / "avx2_kernels.py"), sys.executable, "-X", "faulthandler", "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reason = avx2_kernels.unavailable()
    if reason is not None:  # the machine cannot fault CPUID: one clear line, exit 2
        assert run.returncode == 2 and run.stderr.strip() == (
            f"avx2_kernels: cannot force AVX2 kernels: {reason}"
        )
        return
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"avx2": True, "avx512f": False, "onnxq_cpu": "avx2", "same": True}


def test_the_tests_that_check_int8_numbers_pass_on_avx2_kernels() -> None:
    # NOTE: the suite must pass on both CPU kinds (AVX2 saturates u8s8 pair sums in int16); on a VNNI
    # machine this runs the tests that check quantized numbers on the AVX2 kernels as well.
    if avx2_kernels.unavailable() is not None:
        return  # covered by the first test: exit 2 and the reason
    root = TOOLS.parent
    files = [
        "tests/passes/quantization/test_static_qdq.py",
        "tests/passes/quantization/test_quantize_dynamic.py",
        "tests/targets/test_u8s8_arithmetic.py",
        "tests/validation/test_self_check.py",
    ]
    run = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "avx2_kernels.py"),
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *files,
        ],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_the_exit_status_is_the_commands() -> None:
    if avx2_kernels.unavailable() is not None:
        return  # covered by the test above: exit 2 and the reason
    code = "import sys; sys.exit(7)"
    run = subprocess.run([sys.executable, str(TOOLS / "avx2_kernels.py"), sys.executable, "-c", code])
    assert run.returncode == 7


def test_a_real_crash_still_reaches_the_programs_handler_and_kills_it() -> None:
    if avx2_kernels.unavailable() is not None:
        return  # covered by the first test: exit 2 and the reason
    crash = "import ctypes; ctypes.string_at(0)"
    run = subprocess.run(
        [sys.executable, str(TOOLS / "avx2_kernels.py"), sys.executable, "-X", "faulthandler", "-c", crash],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 128 + 11
    assert run.stderr.startswith("Fatal Python error: Segmentation fault")


def test_machines_without_cpuid_faulting_are_named() -> None:
    intel = "processor\t: 0\nflags\t\t: fpu avx2 avx512f cpuid_fault\n"
    amd = "processor\t: 0\nflags\t\t: fpu avx2 avx512f\n"
    assert avx2_kernels.unavailable(amd, "x86_64") == (
        "this CPU (or its hypervisor) has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)"
    )
    assert avx2_kernels.unavailable(intel, "aarch64") == "needs an x86-64 CPU, this is aarch64"
    assert avx2_kernels.unavailable(intel, "x86_64") in (
        None,
        "needs gcc to build tools/avx2_kernels/cpuid_mask.c",
    )


def test_a_machine_that_refuses_cpuid_faulting_at_run_time_is_named(tmp_path: Path, monkeypatch) -> None:
    # The flag can be there while a seccomp filter or hypervisor refuses ARCH_SET_CPUID: the
    # library then exits 3 in every program; the tool finds that out on `true` first.
    import shutil

    if shutil.which("gcc") is None:
        return  # the static check names the missing gcc
    refusing = tmp_path / "refuses.c"
    refusing.write_text(
        "#include <unistd.h>\n__attribute__((constructor)) static void f(void) { _exit(3); }\n"
    )
    monkeypatch.setattr(avx2_kernels, "SOURCE", refusing)
    assert avx2_kernels.prepared(tmp_path)[1] == (
        "CPUID faulting is refused at run time (arch_prctl ARCH_SET_CPUID failed)"
    )


def test_the_preload_is_added_to_an_existing_one() -> None:
    env = avx2_kernels.environment(Path("/tmp/x/cpuid_mask.so"), {"LD_PRELOAD": "libother.so", "A": "1"})
    assert env == {"LD_PRELOAD": "/tmp/x/cpuid_mask.so libother.so", "A": "1", "ONNXQ_CPU": "avx2"}
