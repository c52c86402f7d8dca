"""ort-cpu: ONNX Runtime's CPU execution provider (the default target).

Every rule here is a measured fact of onnxruntime 1.32 (/work/shared/ORT_CPU_QDQ.md):

- uint8 asymmetric activations, int8 symmetric weights (u8s8). s8 activations are rewritten to u8
  on x86 but not at fan-out, where the consumers then stay float (surprise 1); s8s8 with
  ``qdqisint8allowed=1`` is 3-7x slower than fp32. So activations are uint8.
- Integer kernels (DQ -> op -> Q): Conv, MatMul, Gemm, Add, Mul, Concat, AveragePool,
  GlobalAveragePool, Sigmoid, LeakyRelu, Softmax, Where. MatMul and Gemm also fuse without an
  output Q (``MatMulIntegerToFloat``, QGemm with float output).
- Run on int8 once Q/DQ are dropped (same scale and zero point in and out): MaxPool, Transpose,
  Reshape, Gather, Squeeze, Unsqueeze, Slice, Flatten, Split, Resize (nearest only), ArgMax.
- Absorbed into the following Q: Relu (when the Q zero point is qmin), Clip (when Q's range lies
  inside [min, max]).
- Float whatever surrounds them: ConvTranspose, Resize (linear), Pad, LayerNormalization, Tanh,
  HardSwish (and every op not listed above).
- Per-channel weights on the output-feature axis only (Conv 0, MatMul N, Gemm by transB), and only
  at opset >= 13 (a DequantizeLinear ``axis`` fails to load at opsets 10-12).
- On AVX2 without VNNI, u8s8 products saturate the int16 pair sum of vpmaddubsw (up to 14 LSB
  wrong with per-channel weights, surprise 2). Remedies measured: 7-bit weights (reduce_range:
  255*64*2 fits int16, keeps the u8s8 kernels and their 1.5-2x speed), u8u8 (exact, 1.4x on
  Zen 3, slower than fp32 on VNNI), ``x64quantprecision`` (a session option the model cannot
  carry). Chosen: reduce_range on avx2, full-range u8s8 on VNNI and arm64.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from onnxq.targets.base import Target, UnknownTargetError, register_target

NAME = "ort-cpu"
CPU_KINDS = ("vnni", "avx2", "arm64")

INTEGER_OPS = frozenset(
    {
        "Conv",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Concat",
        "AveragePool",
        "GlobalAveragePool",
        "Sigmoid",
        "LeakyRelu",
        "Softmax",
        "Where",
    }
)
OUTPUT_OPTIONAL_OPS = frozenset({"MatMul", "Gemm"})
ANCHOR_OPS = frozenset({"Conv", "MatMul", "Gemm"})
DATA_MOVEMENT_OPS = frozenset(
    {
        "MaxPool",
        "Transpose",
        "Reshape",
        "Gather",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Flatten",
        "Split",
        "Resize",
    }
)
ABSORBED_OPS = frozenset({"Relu", "Clip"})
FLOAT_OPS = frozenset(
    {
        "ConvTranspose",
        "Pad",
        "LayerNormalization",
        "Tanh",
        "HardSwish",
        "HardSigmoid",
        "Erf",
        "Gelu",
        "Div",
        "Sub",
    }
)

NOTES = {
    "Conv": "QLinearConv (NHWC at ENABLE_ALL); per-channel on axis 0; Relu/Clip after it absorbed by Q",
    "MatMul": "QLinearMatMul; without output Q MatMulIntegerToFloat; per-channel only on N (axis 1)",
    "Gemm": "QGemm (float output without Q); per-channel on N: transB=1 axis 0, transB=0 axis 1; alpha=1",
    "ConvTranspose": "stays float in every type combination",
    "Resize": "nearest runs on int8; linear stays float and blocks DQ propagation",
    "Pad": "float; DQ -> Pad -> Conv folds the pads into QLinearConv",
    "LayerNormalization": "float",
    "Tanh": "float",
    "HardSwish": "float (expanded to HardSigmoid + Mul)",
    "MaxPool": "runs on int8 when input and output share scale and zero point",
}

VNNI_NOTE = "u8s8 with full 8-bit weights: VNNI accumulates in int32, no saturation, 3-5x over fp32"
AVX2_NOTE = (
    "7-bit weights (reduce_range): AVX2 without VNNI saturates u8s8 products in int16 "
    "(vpmaddubsw); 7-bit weights cannot overflow and keep the u8s8 kernels (1.5-2x over fp32), "
    "u8u8 would be exact but slower"
)
ARM64_NOTE = "u8s8 with full 8-bit weights: arm64 dot-product kernels do not saturate"


def detect_cpu(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """The CPU kind from /proc/cpuinfo flags: ``vnni``, ``avx2`` or ``arm64``.

    Args:
        cpuinfo: Text of /proc/cpuinfo (read from the system when None).
        machine: ``platform.machine()`` (read when None).
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm64"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break
    if {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"} & flags:
        return "vnni"
    if {"asimddp", "asimd"} & flags and "avx2" not in flags:
        return "arm64"
    # NOTE: unknown x86 (no flags readable) is treated as the conservative AVX2 case.
    return "avx2"


def cpu_kind(cpu: str | None = None) -> str:
    """The CPU kind to quantize for: ``cpu`` when given, else ``$ONNXQ_CPU``, else detected.

    ``ONNXQ_CPU`` overrides detection for reproducible runs, and where the process runs on other
    kernels than /proc/cpuinfo says (``tools/avx2_kernels.py`` hides AVX-512 from CPUID).
    """
    chosen = cpu or os.environ.get("ONNXQ_CPU") or detect_cpu()
    chosen = {"arm": "arm64", "aarch64": "arm64", "avx512_vnni": "vnni", "avx_vnni": "vnni"}.get(
        chosen, chosen
    )
    if chosen not in CPU_KINDS:
        raise UnknownTargetError(
            f"unknown CPU kind '{chosen}' for target {NAME} (use one of: {', '.join(CPU_KINDS)})"
        )
    return chosen


def ort_cpu_target(cpu: str | None = None) -> Target:
    """The ort-cpu profile for ``cpu`` (``vnni``, ``avx2``, ``arm64``; else :func:`cpu_kind`)."""
    chosen = cpu_kind(cpu)
    note = {"vnni": VNNI_NOTE, "avx2": AVX2_NOTE, "arm64": ARM64_NOTE}[chosen]
    source = "given " if cpu else ("ONNXQ_CPU=" if os.environ.get("ONNXQ_CPU") else "detected ")
    return Target(
        name=NAME,
        reduce_range=chosen == "avx2",
        integer_ops=INTEGER_OPS,
        output_optional_ops=OUTPUT_OPTIONAL_OPS,
        anchor_ops=ANCHOR_OPS,
        data_movement_ops=DATA_MOVEMENT_OPS,
        absorbed_ops=ABSORBED_OPS,
        float_ops=FLOAT_OPS,
        quantize_graph_outputs=False,
        gelu_form="ort-cpu",
        dynamic_kernels=True,
        cpu=chosen,
        cpu_note=f"{source}{chosen}: {note}",
        notes=NOTES,
    )


register_target(NAME, ort_cpu_target)
