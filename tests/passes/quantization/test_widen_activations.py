"""widen-activations: chosen node units of an A8W8 graph at 16 bits, the same real values at the borders."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxq
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.runtime import session as runtime_session
from onnxq.targets import qnn_htp


def _samples() -> list[dict[str, np.ndarray]]:
    with np.load(example_inputs_path()) as npz:
        return [{"input": row[None]} for row in npz["input"][:48]]


def _quantize(**options: object) -> tuple[ir.Model, onnxq.QuantizeReport]:
    return onnxq.quantize(onnxq.load_model(example_model_path()), _samples(), target="qnn", **options)


def _dq_params(dq: ir.Node) -> tuple[float, int, ir.DataType]:
    zero = dq.inputs[2].const_value
    return float(dq.inputs[1].const_value.numpy()), int(zero.numpy()), zero.dtype


def test_widened_convs_are_sixteen_bit_units_with_exact_borders() -> None:
    a8, _ = _quantize(self_check=False)
    wide, report = _quantize(self_check=False, wide=("Conv",))
    assert wide.opset_imports[""] >= 21
    assert report.stats["widen-activations.nodes_widened"] == 3
    assert report.stats["widen-activations.biases_rescaled"] == 3
    for conv in (n for n in wide.graph if n.op_type == "Conv"):
        x_dq, w_dq, b_dq = (v.producer() for v in conv.inputs)
        xs, xz, xt = _dq_params(x_dq)
        assert xt == ir.DataType.UINT16, conv.name  # the unit reads 16 bits...
        q = next(iter(conv.outputs[0].uses())).node
        assert q.op_type == "QuantizeLinear" and q.outputs[0].dtype == ir.DataType.UINT16  # ...and writes them
        assert w_dq.inputs[0].const_value.dtype == ir.DataType.INT8  # weights stay 8-bit
        ws = w_dq.inputs[1].const_value.numpy()
        np.testing.assert_allclose(b_dq.inputs[1].const_value.numpy(), xs * ws, rtol=1e-6)
    # NOTE: a border is exact: the 8-bit graph's first Conv input, read at 16 bits, is 257 x the same code
    first8 = next(n for n in a8.graph if n.op_type == "Conv").inputs[0].producer()
    first16 = next(n for n in wide.graph if n.op_type == "Conv").inputs[0].producer()
    s8, z8, _ = _dq_params(first8)
    s16, z16, _ = _dq_params(first16)
    assert z16 == 257 * z8 and s16 == pytest.approx(s8 / 257, rel=1e-6)
    # NOTE: the QDQ arithmetic, run as written: 16-bit conv outputs are rounded finer than 8-bit ones
    feed = _samples()[0]
    ref = runtime_session(onnxq.load_model(example_model_path())).run(None, feed)[0]
    out8 = runtime_session(a8).run(None, feed)[0]
    out16 = runtime_session(wide).run(None, feed)[0]
    assert out16.shape == out8.shape == ref.shape
    assert np.abs(out16 - ref).max() <= np.abs(out8 - ref).max() * 1.5 + 1e-3


def test_a16_needs_a_target_with_sixteen_bit_activations() -> None:
    with pytest.raises(onnxq.errors.OptionError, match="16-bit profile"):
        onnxq.quantize(onnxq.load_model(example_model_path()), _samples(), target="ort-cpu", wide=("Conv",))


@pytest.mark.skipif(not qnn_htp.available(), reason=f"HTP simulator not installed: {qnn_htp.INSTALL_HINT}")
def test_a_mixed_a8_a16_graph_runs_entirely_on_the_htp() -> None:
    _, report = _quantize(wide=("Conv",))
    check = report.self_check
    assert check is not None and check.offload is not None and check.offload.complete, check.offload
    (out,) = check.outputs
    assert out.sqnr_db is not None and out.sqnr_db >= 30, out


def test_cli_refuses_a16_off_qnn_in_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxq.cli import main

    out = tmp_path / "q.onnx"
    code = main(["quantize", str(example_model_path()), "-o", str(out), "--calib", str(example_inputs_path()),
                 "--a16", "Conv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--a16" in err[0] and "ort-cpu" in err[0], err
    assert not out.exists()
