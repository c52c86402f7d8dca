"""The ort-cpu target profile: CPU detection, type choice per CPU, per-channel axes, rule data."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from onnxq.errors import UserError
from onnxq.framework.context import PassContext, Resource
from onnxq.targets import TARGETS, Target, UnknownTargetError, get_target
from onnxq.targets.ort_cpu import cpu_kind, detect_cpu
from tests.conftest import parse

X86_VNNI = "processor: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n"
X86_AVX_VNNI = "flags\t: fpu avx avx2 avx_vnni\n"
X86_AVX2 = "flags\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "kind"),
    [
        (X86_VNNI, "x86_64", "vnni"),
        (X86_AVX_VNNI, "x86_64", "vnni"),
        (X86_AVX2, "x86_64", "avx2"),
        ("", "aarch64", "arm64"),
        ("", "x86_64", "avx2"),
    ],
)
def test_detect_cpu_from_flags(cpuinfo: str, machine: str, kind: str) -> None:
    assert detect_cpu(cpuinfo, machine) == kind


def test_avx2_uses_7bit_weights_and_says_why() -> None:
    target = get_target("ort-cpu", cpu="avx2")
    assert target.reduce_range
    assert target.weight_qrange() == (-64, 64)
    # 7-bit weights cannot saturate vpmaddubsw's int16 pair sum.
    assert 255 * 64 * 2 < 2**15
    assert "saturat" in target.cpu_note and "avx2" in target.cpu_note
    assert "7-bit" in target.describe()


@pytest.mark.parametrize("cpu", ["vnni", "arm64"])
def test_vnni_and_arm_use_full_range(cpu: str) -> None:
    target = get_target("ort-cpu", cpu=cpu)
    assert not target.reduce_range
    assert target.weight_qrange() == (-127, 127)
    assert target.activation_qrange() == (0, 255)
    assert target.activation_dtype == ir.DataType.UINT8
    assert target.weight_dtype == ir.DataType.INT8
    assert target.cpu == cpu and cpu in target.cpu_note


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown target 'ort-gpu'"):
        get_target("ort-gpu")
    with pytest.raises(UserError, match="unknown CPU kind 'sse'"):
        get_target("ort-cpu", cpu="sse")
    assert "ort-cpu" in TARGETS


def test_target_is_a_resource() -> None:
    target = get_target("ort-cpu", cpu="vnni")
    assert isinstance(target, Resource)
    ctx = PassContext.with_resources([target])
    assert ctx.resource(Target) is target


GEMMS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 4] x, float[4, 3] w0, float[3, 4] w1, float[3, 4, 5, 5] wt, float[2, 4, 6, 6] xi) => (float[2, 3] a, float[2, 3] b, float[2, 3] c, float[2, 3] d) {
  a = Gemm<transB = 0>(x, w0)
  b = Gemm<transB = 1>(x, w1)
  c = MatMul(x, w0)
  d = Gemm(x, w0)
  e = ConvTranspose(xi, wt)
  f = Conv(xi, wt)
}
"""


def test_per_channel_axes_follow_the_fused_kernel() -> None:
    model = parse(GEMMS)
    target = get_target("ort-cpu", cpu="vnni")
    axes = {n.outputs[0].name: target.weight_axis(n, 2 if n.op_type != "Conv" else 4) for n in model.graph}
    assert axes["a"] == 1  # transB=0: B is [K, N], N is axis 1
    assert axes["b"] == 0  # transB=1: B is [N, K]
    assert axes["c"] == 1  # MatMul [K, N]
    assert axes["d"] == 1  # transB defaults to 0
    convs = {n.op_type: target.weight_axis(n, 4) for n in model.graph if "Conv" in n.op_type}
    assert convs == {"ConvTranspose": 1, "Conv": 0}


def test_rule_sets_encode_the_measured_table() -> None:
    t = get_target("ort-cpu", cpu="vnni")
    for op in (
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
    ):
        assert op in t.integer_ops
    for op in (
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
    ):
        assert op in t.data_movement_ops
    assert t.absorbed_ops == {"Relu", "Clip"}
    for op in ("ConvTranspose", "Pad", "LayerNormalization", "Tanh", "HardSwish"):
        assert op in t.float_ops and op not in t.integer_ops
    assert t.integer_ops.isdisjoint(t.data_movement_ops) and t.integer_ops.isdisjoint(t.float_ops)
    assert t.min_per_channel_opset == 13
    assert not t.quantize_graph_outputs


def test_linear_resize_is_not_data_movement() -> None:
    model = parse("""
<ir_version: 10, opset_import: ["" : 18]>
g (float[1, 2, 4, 4] x, float[4] s) => (float[1, 2, 8, 8] a, float[1, 2, 8, 8] b) {
  a = Resize<mode = "nearest">(x, , s)
  b = Resize<mode = "linear">(x, , s)
}
""")
    t = get_target("ort-cpu", cpu="vnni")
    nearest, linear = list(model.graph)
    assert t.is_data_movement(nearest)
    assert not t.is_data_movement(linear)


def test_targets_are_hashable_values() -> None:
    assert get_target("ort-cpu", cpu="avx2") == get_target("ort-cpu", cpu="avx2")
    assert len({get_target("ort-cpu", cpu="avx2"), get_target("ort-cpu", cpu="vnni")}) == 2


def test_cpu_kind_given_then_environment_then_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxq.targets.ort_cpu as ort_cpu

    monkeypatch.setattr(ort_cpu, "detect_cpu", lambda *a, **k: "vnni")
    monkeypatch.delenv("ONNXQ_CPU", raising=False)
    assert cpu_kind() == "vnni"
    monkeypatch.setenv("ONNXQ_CPU", "avx2")  # tools/avx2_kernels.py sets it beside the CPUID mask
    assert cpu_kind() == "avx2" and cpu_kind("arm") == "arm64"
    assert get_target("ort-cpu").reduce_range is True
    assert get_target("ort-cpu").cpu_note.startswith("ONNXQ_CPU=avx2: 7-bit weights")
    monkeypatch.setenv("ONNXQ_CPU", "pentium")
    with pytest.raises(UnknownTargetError, match="unknown CPU kind 'pentium'"):
        cpu_kind()
