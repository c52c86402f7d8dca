"""``onnxq bench``: JSON structure on the bundled example, interleaved models, the acceptance gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onnxq.cli import main
from onnxq.errors import OptionError
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.validation.bench import parse_size


def test_bench_json_on_example(capsys) -> None:
    code = main(["bench", str(example_model_path()), "--inputs", str(example_inputs_path()), "--runs", "12",
                 "--warmup", "2", "--threads", "1,2", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["threads"] == [1, 2] and doc["batch"] == 32 and doc["gate"] is None
    [model] = doc["models"]
    assert model["size_bytes"] == example_model_path().stat().st_size
    assert model["peak_memory_bytes"] > 0
    for lat, threads in zip(model["latency"], (1, 2), strict=True):
        assert lat["threads"] == threads and lat["runs"] == 12
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["throughput"] == pytest.approx(32 * 1e3 / lat["p50_ms"])
        assert lat["speedup"] == 1.0


def _two(tmp_path: Path) -> list[str]:
    copy = tmp_path / "copy.onnx"
    shutil.copy(example_model_path(), copy)
    return [str(example_model_path()), str(copy)]


def test_gate_pass_and_fail_exit_codes(tmp_path: Path, capsys) -> None:
    common = ["--runs", "10", "--warmup", "1", "--no-memory"]
    assert main(["bench", *_two(tmp_path), *common, "--max-size", "1MB", "--min-speedup", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS: copy.onnx speedup")
    # The same model cannot be 50x faster than itself, nor fit in 1 kB.
    assert main(["bench", *_two(tmp_path), *common, "--min-speedup", "50", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["gate"]["passed"] is False and "< 50x" in doc["gate"]["line"]
    assert len(doc["models"]) == 2 and doc["reference"] == str(example_model_path())
    assert main(["bench", str(example_model_path()), *common, "--max-size", "1kB"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("FAIL: digits_cnn.onnx size 43,")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-speedup", "2"], "needs a reference and a candidate"),
        (["--max-size", "lots"], "expected bytes or a size"),
        (["--threads", "0"], "positive integers"),
        (["--inputs", "/nonexistent.npz"], "no such file"),
    ],
)
def test_user_errors_exit_2(args: list[str], message: str, capsys) -> None:
    assert main(["bench", str(example_model_path()), "--runs", "1", "--no-memory", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_inputs_that_do_not_fit_are_a_user_error(tmp_path: Path, capsys) -> None:
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros((1, 1, 8, 8), np.float32))
    assert main(["bench", str(example_model_path()), "--runs", "1", "--no-memory", "--inputs", str(bad)]) == 2
    assert "inputs lack 'input'" in capsys.readouterr().err


def test_parse_size() -> None:
    assert parse_size("1000") == 1000
    assert parse_size("5MB") == 5_000_000
    assert parse_size("2.5 MiB") == int(2.5 * 2**20)
    with pytest.raises(OptionError):
        parse_size("-1")


def test_size_counts_external_data(tmp_path: Path) -> None:
    from onnxq.ir.io import load_model, save_model
    from onnxq.validation.bench import model_size

    path = tmp_path / "ext.onnx"
    save_model(load_model(example_model_path()), path, external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size > 0
    assert model_size(path) == path.stat().st_size + data.stat().st_size


def test_batch_sizes_cut_or_repeat_the_inputs(capsys) -> None:
    code = main(["bench", str(example_model_path()), "--inputs", str(example_inputs_path()), "--batch", "1,48",
                 "--runs", "5", "--warmup", "1", "--no-memory", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["batches"] == [1, 48]
    rows = doc["models"][0]["latency"]
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 48)]
    assert rows[1]["throughput"] == pytest.approx(48 * 1e3 / rows[1]["p50_ms"])


def test_fixed_batch_model_refuses_other_batches(tmp_path: Path, capsys) -> None:
    import onnx
    import onnx.parser

    path = tmp_path / "fixed.onnx"
    onnx.save(onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 8] x) => (float[2, 8] y) { y = Relu(x) }"""), path)
    assert main(["bench", str(path), "--batch", "4", "--runs", "1", "--no-memory"]) == 2
    assert "input 'x' has a fixed batch of 2; cannot run batch 4" in capsys.readouterr().err
