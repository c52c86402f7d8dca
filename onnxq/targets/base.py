"""Target profiles: what an execution provider does with a QDQ graph, as data plus a little code.

A :class:`Target` is a PassContext resource (``insert-qdq`` and ``quantize-weights`` need one).
It says which types activations and weights get, which op types run on integer kernels when
their inputs and output are quantized, which ops only move data (and run on int8 when input
and output share one scale and zero point), which are absorbed into the following
QuantizeLinear (Relu, Clip), and which stay float (no QDQ around them). A profile for a new
execution provider subclasses nothing: it builds a ``Target`` with its own rule data, or
subclasses ``Target`` to override :meth:`Target.weight_axis` / :meth:`Target.activation_inputs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import onnx_ir as ir

from onnxq.errors import UserError
from onnxq.framework.context import Resource


class UnknownTargetError(UserError):
    """A target (or CPU kind) name the registry does not know."""


#: Input slots of each op that carry activations (quantized with calibrated ranges). Slots not
#: listed (weights, biases, shapes, indices) are handled by ``quantize-weights`` or left alone.
#: ``None`` means "every input".
ACTIVATION_INPUTS: Mapping[str, tuple[int, ...] | None] = {
    "Conv": (0,),
    "ConvTranspose": (0,),
    "Gemm": (0,),
    "MatMul": (0, 1),
    "Add": (0, 1),
    "Mul": (0, 1),
    "Concat": None,
    "AveragePool": (0,),
    "GlobalAveragePool": (0,),
    "Sigmoid": (0,),
    "LeakyRelu": (0,),
    "Softmax": (0,),
    "Where": (1, 2),
    "MaxPool": (0,),
    "Transpose": (0,),
    "Reshape": (0,),
    "Gather": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Slice": (0,),
    "Flatten": (0,),
    "Split": (0,),
    "Resize": (0,),
    "ArgMax": (0,),
    "Relu": (0,),
    "Clip": (0,),
}

#: Input slot of the weight of each op that has one (a constant tensor quantized to int8).
WEIGHT_INPUT: Mapping[str, int] = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
#: Input slot of the bias (quantized to int32 with scale = x_scale * w_scale).
BIAS_INPUT: Mapping[str, int] = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


@dataclasses.dataclass(frozen=True)
class Target(Resource):
    """Quantization rules of one execution provider on one kind of CPU/accelerator.

    Attributes:
        name: Registry name (``ort-cpu``, ``tensorrt``...).
        activation_dtype: Type of quantized activations (UINT8 or INT8).
        activation_symmetric: Whether activations are symmetric (zero point 0 / 128).
        weight_dtype: Type of quantized weights.
        weight_symmetric: Whether weights are symmetric (zero point 0).
        reduce_range: Weights use 7 bits ([-64, 64]) instead of [-127, 127].
        per_channel: Default for per-channel weights (on the axis from :meth:`weight_axis`).
        min_per_channel_opset: Lowest default-domain opset whose DequantizeLinear takes ``axis``.
        min_qdq_opset: Lowest opset that has QuantizeLinear/DequantizeLinear.
        integer_ops: Ops that run on an integer kernel when inputs and output are quantized.
        output_optional_ops: Integer ops that also fuse without an output Q (float output).
        anchor_ops: Compute-heavy integer ops quantized wherever eligible; the other integer
            ops are quantized only next to an already quantized tensor (a lone Add between
            float ops would pay four Q/DQ for a cheaper kernel, so it stays float).
        data_movement_ops: Ops that run on int8 when input and output share scale/zero point.
        absorbed_ops: Ops removed when the following Q makes them redundant (Relu, Clip).
        float_ops: Ops that stay float whatever surrounds them (documentation and ``check``).
        lowered_ops: Ops the provider has no kernel for at all, which ``quantize`` writes out in
            ops it runs (``HardSigmoid`` -> Mul / Add / Clip for NNAPI).
        quantize_graph_outputs: Whether a graph output may be quantized when nothing needs it.
        static_shapes: The provider runs static shapes only: ``quantize`` fixes dynamic input dims
            to the calibration samples' shapes.
        float_nodes_run: A node left float runs on the provider (False: it falls back to another
            device, so the accuracy guard has no float alternative to offer).
        wider_activations: The name of the same provider's profile with 16-bit activations (the
            accuracy guard's first rung), or None.
        dynamic_kernels: The provider runs onnxruntime's dynamic-quantization kernels
            (DynamicQuantizeMatMul, DynamicQuantizeLSTM, MatMulIntegerToFloat): the accuracy guard
            tries INT8 weights with activation ranges taken at run time.
        gelu_form: The GELU form the optimize preset emits for it (``fuse-gelu{target}``:
            ``ort-cpu`` com.microsoft Gelu, ``tensorrt``, or the portable ``onnx`` one).
        requires_bias_int32: Bias of Conv/Gemm is quantized to int32 (scale x_scale*w_scale).
        cpu: The CPU kind the profile was chosen for (``vnni``, ``avx2``, ``arm64``) or None.
        cpu_note: Why the types were chosen; the quantize summary prints it.
        notes: Per-op facts (op type -> text) for reports and ``onnxq check``.
    """

    name: str
    activation_dtype: ir.DataType = ir.DataType.UINT8
    activation_symmetric: bool = False
    weight_dtype: ir.DataType = ir.DataType.INT8
    weight_symmetric: bool = True
    reduce_range: bool = False
    per_channel: bool = True
    min_per_channel_opset: int = 13
    min_qdq_opset: int = 10
    integer_ops: frozenset[str] = frozenset()
    output_optional_ops: frozenset[str] = frozenset()
    anchor_ops: frozenset[str] = frozenset()
    data_movement_ops: frozenset[str] = frozenset()
    absorbed_ops: frozenset[str] = frozenset()
    float_ops: frozenset[str] = frozenset()
    lowered_ops: frozenset[str] = frozenset()
    quantize_graph_outputs: bool = False
    static_shapes: bool = False
    float_nodes_run: bool = True
    wider_activations: str | None = None
    dynamic_kernels: bool = False
    gelu_form: str = "onnx"
    requires_bias_int32: bool = True
    cpu: str | None = None
    cpu_note: str = ""
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)

    # --- quantized integer ranges ---------------------------------------------------
    def activation_qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of activations."""
        return _qrange(self.activation_dtype, reduce=False, symmetric=self.activation_symmetric)

    def weight_qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of weights; 7-bit with ``reduce_range``."""
        return _qrange(self.weight_dtype, reduce=self.reduce_range, symmetric=self.weight_symmetric)

    # --- op rules ---------------------------------------------------------------------
    def activation_inputs(self, node: ir.Node) -> tuple[int, ...]:
        """Input slots of ``node`` that carry activations to quantize."""
        slots = ACTIVATION_INPUTS.get(node.op_type, (0,))
        if slots is None:
            return tuple(range(len(node.inputs)))
        return tuple(i for i in slots if i < len(node.inputs) and node.inputs[i] is not None)

    def weight_axis(self, node: ir.Node, rank: int) -> int | None:
        """The axis of ``node``'s weight that per-channel scales go on; None: per-tensor only.

        Conv 0 (output channels), ConvTranspose 1, MatMul ``[K, N]`` 1 (N), Gemm by ``transB``
        (1 -> 0, 0 -> 1): the axis of the output features, the only one the kernels fuse.
        """
        op = node.op_type
        if op == "Conv":
            return 0 if rank >= 1 else None
        if op == "ConvTranspose":
            return 1 if rank >= 2 else None
        if op == "MatMul":
            # NOTE: batched (rank > 2) constant weights are left per-tensor: not measured to fuse.
            return 1 if rank == 2 else None
        if op == "Gemm":
            trans_b = node.attributes.get("transB")
            return (0 if trans_b is not None and trans_b.as_int() == 1 else 1) if rank == 2 else None
        return None

    def is_data_movement(self, node: ir.Node) -> bool:
        """Whether ``node`` runs on int8 with shared scale/zero point (Resize: nearest only)."""
        if node.op_type not in self.data_movement_ops or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Resize":
            mode = node.attributes.get("mode")
            return mode is None or mode.as_string() == "nearest"
        if node.op_type == "MaxPool":
            return len([o for o in node.outputs if o is not None and o.uses()]) <= 1 and (
                len(node.outputs) < 2 or not node.outputs[1].uses()
            )
        return True

    def is_integer_op(self, node: ir.Node) -> bool:
        return node.op_type in self.integer_ops and node.domain in ("", "ai.onnx")

    def describe(self) -> str:
        """One line: name, types and the CPU choice."""
        act = f"{self.activation_dtype.name.lower()} {'sym' if self.activation_symmetric else 'asym'}"
        wbits = "7-bit " if self.reduce_range else ""
        weights = f"{wbits}{self.weight_dtype.name.lower()} {'sym' if self.weight_symmetric else 'asym'}"
        cpu = f" on {self.cpu}" if self.cpu else ""
        note = f" ({self.cpu_note})" if self.cpu_note else ""
        return f"{self.name}{cpu}: activations {act}, weights {weights}{note}"


def _qrange(dtype: ir.DataType, *, reduce: bool, symmetric: bool) -> tuple[int, int]:
    if dtype == ir.DataType.UINT16:
        return (0, 65535)
    if dtype == ir.DataType.UINT8:
        return (0, 127) if reduce else (0, 255)
    if dtype == ir.DataType.INT8:
        if reduce:
            # NOTE: [-64, 64] keeps u8*s8 pair sums within int16 (255*64*2 = 32640 < 32767).
            return (-64, 64)
        return (-127, 127) if symmetric else (-128, 127)
    raise ValueError(f"unsupported quantized type {dtype}")


#: Target factories ``name -> factory(cpu) -> Target``; each target module registers itself on
#: import (the set of names is fixed by the installed modules, so this is not run-time state).
_FACTORIES: dict[str, Callable[[str | None], Target]] = {}


def register_target(name: str, factory: Callable[[str | None], Target]) -> None:
    """Makes ``get_target(name)`` build a target with ``factory(cpu)``."""
    _FACTORIES[name] = factory


def target_names() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_FACTORIES))


def get_target(name: str, cpu: str | None = None) -> Target:
    """The target profile called ``name``; ``cpu`` overrides CPU detection where it matters.

    Raises:
        UnknownTargetError: ``name`` (or ``cpu``) is not known.
    """
    _load_builtins()
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES))
        raise UnknownTargetError(f"unknown target '{name}' (targets: {known})")
    return factory(cpu)


def _load_builtins() -> None:
    import importlib

    for module in ("onnxq.targets.ort_cpu", "onnxq.targets.tensorrt", "onnxq.targets.qnn", "onnxq.targets.nnapi",
                   "onnxq.targets.xnnpack"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # NOTE: tensorrt.py is written by another engineer; a missing module is not an error.
            if e.name != module:
                raise
