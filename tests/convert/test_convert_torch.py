"""PyTorch routes: nn.Module via from_torch, .pt2 via from_pt2 and via the CLI in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxq import runtime  # noqa: E402
from onnxq.convert import from_pt2, from_torch  # noqa: E402
from onnxq.errors import ConversionError, ModelLoadError  # noqa: E402
from onnxq.ir.io import load_model, save_model  # noqa: E402


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm(self.linear(x)).relu() + y.mean(), torch.cat([x, x], 0) * 2


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=g), torch.randn(batch, 4, generator=g)


def _assert_matches_torch(model, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    with torch.no_grad():
        want = [t.numpy() for t in torch.utils._pytree.tree_leaves(module(*args))]
    names = [v.name for v in model.graph.inputs]
    got = runtime.run(model, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    for (name, value), expected in zip(got.items(), want, strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def _dims(value) -> list:
    return [d if isinstance(d, int) else d.value for d in value.shape.dims]


def test_from_torch_round_trip(tmp_path: Path) -> None:
    module = TwoHeads().train()
    result = from_torch(module, _inputs(2))
    assert module.training, "the module's mode must be restored"
    assert result.source_kind == "torch" and result.opset == 18
    assert result.input_names == ["x", "y"] and len(result.max_abs_diff) == 2
    assert all(d < 1e-4 for d in result.max_abs_diff.values())
    onnx.checker.check_model(save_model(result.model, tmp_path / "m.onnx"), full_check=True)
    _assert_matches_torch(load_model(tmp_path / "m.onnx"), module.eval(), _inputs(2, seed=1))
    assert json.loads(json.dumps(result.to_json()))["source"] == "torch module 'TwoHeads'"


def test_dim_names_make_axes_dynamic_and_readable() -> None:
    module = TwoHeads().eval()
    result = from_torch(module, _inputs(2), dim_names={"x": "batch", "y:0": "batch"}, optimize=True)
    assert result.input_shapes == [["batch", 4], ["batch", 4]]
    assert _dims(result.model.graph.outputs[1]) == ["2*batch", 4]
    assert result.optimized
    for batch in (1, 5):
        _assert_matches_torch(result.model, module, _inputs(batch, seed=batch))


def test_exporter_symbols_get_default_names_and_dim_names_kept() -> None:
    auto = torch.export.Dim.AUTO
    result = from_torch(
        TwoHeads(),
        _inputs(2),
        dynamic_shapes=({0: torch.export.Dim("N")}, {0: auto}),
        dim_names={"y": "rows"},
    )
    assert result.input_shapes == [["N", 4], ["rows", 4]]
    assert set(result.renamed_dims.values()) == {"rows"}


def test_export_failure_is_one_line_conversion_error() -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(
        ConversionError, match=r"torch module 'DataDependent': torch.onnx.export failed: "
    ) as info:
        from_torch(DataDependent(), (torch.randn(2, 4),))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("opset", "message"), [(17, "too low; .* 18 or newer"), (24, "too high; .* up to opset 23")]
)
def test_torch_opset_out_of_range(opset: int, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        from_torch(TwoHeads(), _inputs(2), opset=opset)


def test_unknown_dim_name_input() -> None:
    with pytest.raises(ConversionError, match=r"no input named 'z' \(inputs: x, y\)"):
        from_torch(TwoHeads(), _inputs(2), dim_names={"z": "batch"})


def _save_pt2(path: Path, *, keep_example_inputs: bool = True) -> torch.nn.Module:
    class Hidden(torch.nn.Module):  # NOTE: local class: a fresh process cannot import it
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(self.conv(image).relu(), 1).flatten(1)

    module = Hidden().eval()
    batch = torch.export.Dim("batch_size", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"image": {0: batch}})
    if not keep_example_inputs:
        program.example_inputs = None
    torch.export.save(program, path)
    return module


def test_pt2_via_cli_in_fresh_process(tmp_path: Path) -> None:
    src = tmp_path / "model.pt2"
    module = _save_pt2(src)
    out = tmp_path / "model.onnx"
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxq",
            "convert",
            str(src),
            "-o",
            str(out),
            "--dynamic",
            "image=batch",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["source_kind"] == "pt2" and report["output"] == str(out)
    assert report["inputs"][0]["shape"] == ["batch", 3, 8, 8]
    assert report["max_abs_diff"] and max(report["max_abs_diff"].values()) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt2"]
    model = load_model(out)
    assert _dims(model.graph.inputs[0]) == ["batch", 3, 8, 8]
    for batch in (1, 3):
        image = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            want = module(image).numpy()
        (got,) = runtime.run(model, {"image": image.numpy()}).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_pt2_without_example_inputs_uses_random_inputs(tmp_path: Path) -> None:
    src = tmp_path / "bare.pt2"
    _save_pt2(src, keep_example_inputs=False)
    result = from_pt2(src)
    assert result.notes and "random inputs" in result.notes[0]
    assert result.input_shapes == [["batch", 3, 8, 8]]


def test_pt2_static_axis_cannot_be_named(tmp_path: Path) -> None:
    src = tmp_path / "m.pt2"
    _save_pt2(src)
    with pytest.raises(
        ConversionError, match=r"axis 2 of 'image' is static \(8\); the .pt2 file fixes its size"
    ):
        from_pt2(src, dynamic={"image:2": "height"})


def test_corrupt_pt2_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match=r"bad.pt2: cannot load as a torch.export program"):
        from_pt2(bad)
