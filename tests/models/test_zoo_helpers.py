"""Helpers of the zoo scripts: precise-BN recalibration, legacy-exporter variants, tf2onnx dims."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # NOTE: models/ is a folder of scripts, not installed

torch = pytest.importorskip("torch")

from models import _export, _torch_utils  # noqa: E402


def test_recalibrate_batchnorm_sets_exact_statistics_of_the_inputs() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 1))
    with torch.no_grad():  # statistics as a few augmented batches would leave them: far off
        net[0].running_mean.fill_(5.0)
        net[0].running_var.fill_(9.0)
    inputs = torch.randn(100, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None] + 1.0
    _torch_utils.recalibrate_batchnorm(net, inputs, batch_size=256)
    bn = net[0]
    np.testing.assert_allclose(bn.running_mean, inputs.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, inputs.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1, "the momentum must be restored"
    assert not net.training


def test_recalibrate_batchnorm_leaves_nets_without_batchnorm_alone() -> None:
    net = torch.nn.Linear(4, 2).train()
    _torch_utils.recalibrate_batchnorm(net, torch.randn(8, 4))
    assert net.training


def test_legacy_variant_is_an_old_opset_export_of_the_same_weights() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10),
    ).eval()  # fmt: skip
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    # NOTE: legacy_variant reads only the output names from the base model's graph
    base_graph = ir.from_onnx_text(
        '<ir_version: 10, opset_import: ["" : 18]> g (float[batch, 1, 8, 8] input) => (float[batch, 10] logits) '
        "{ logits = Identity(input) }"
    )
    exported = _export.Exported(base_graph, "hand-written")
    base = _torch_utils.classifier_entry(
        net, exported, name="tiny", architecture="tiny", dataset="random", input_name="input",
        x_train=x, x_test=x, y_test=np.zeros(6, dtype=np.int64),
    )  # fmt: skip
    variant = _torch_utils.legacy_variant(net, base, name="tiny_op11", opset=11)
    assert variant.name == "tiny_op11" and variant.details["variant_of"] == "tiny"
    assert variant.model.opset_imports[""] == 11
    assert "BatchNormalization" not in {n.op_type for n in variant.model.graph}
    (value,) = variant.model.graph.inputs
    assert value.name == "input" and str(value.shape[0]) == "input_dynamic_axes_1"
    session = ort.InferenceSession(ir.to_proto(variant.model).SerializeToString())
    (logits,) = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, _torch_utils.predict(net, x), rtol=1e-4, atol=1e-5)
    assert variant.held_out is base.held_out and variant.calib is base.calib


def test_unknown_tf2onnx_dims_are_renumbered_in_order_of_use() -> None:
    model = ir.from_onnx_text(
        """
        <ir_version: 8, opset_import: ["" : 11]>
        g (float[unk__152, 8] x) => (float[unk__153, 8] y) { t = Relu(x)  y = Neg(t) }
        """
    )
    _export._renumber_unknown_dims(model)
    assert [str(model.graph.inputs[0].shape[0]), str(model.graph.outputs[0].shape[0])] == ["unk__0", "unk__1"]


def test_train_net_is_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """models/sweep.py relies on train_net(seed) being reproducible for one seed."""
    from models import build, digits_cnn

    monkeypatch.setattr(digits_cnn, "EPOCHS", 1)  # NOTE: one epoch keeps this test to seconds
    with build._torch_state_restored():  # NOTE: setup() pins threads; other tests must not inherit it
        a, b, c = digits_cnn.train_net(3), digits_cnn.train_net(3), digits_cnn.train_net(4)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values(), strict=True))
    assert all(torch.equal(pa, pb) for pa, pb, _ in pairs)
    assert not all(torch.equal(pa, pc) for pa, _, pc in pairs)
