"""Reading constants out of a graph: one function for the passes and the validators."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["constant_array"]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is a constant (initializer that is not an input, or Constant)."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    if tensor is None:
        return None
    try:
        return np.asarray(tensor.numpy())
    except Exception:  # noqa: BLE001  # external data missing or unreadable: not usable as a constant
        return None


def read_and_release(tensor: ir.TensorProtocol) -> np.ndarray:
    """The tensor as an array; a memory-mapped (external) one is copied and unmapped at once.

    NOTE: unmapping drops the file pages from this process's RSS; a view into the mapping would
    keep it alive (and ``release()`` refuses to close a mapping with live views).
    """
    if isinstance(tensor, ir.ExternalTensor):
        array = np.array(tensor.numpy(), copy=True)
        tensor.release()
        return array
    return np.asarray(tensor.numpy())
