"""Executors: this machine's processes and a Ray cluster (started inside the tests, no network)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnxq.cli import main
from onnxq.examples import example_inputs_path, example_model_path
from onnxq.framework.executor import LocalExecutor, RayExecutor

MODEL, DATA = str(example_model_path()), str(example_inputs_path())


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise ValueError(f"task {x} failed")


def _mean_top_logit(outputs: list[np.ndarray], labels: object) -> float:
    """A continuous metric: every variant scores differently, so equal results mean equal work."""
    del labels
    return float(np.mean(outputs[0].max(axis=-1)))


def _die_once(marker: str) -> int:
    """Kills its own worker process the first time (as a crashed or preempted node would)."""
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)
    return 42


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_executor_keeps_the_order_and_the_task_s_own_error(jobs: int) -> None:
    with LocalExecutor(jobs) as ex:
        assert ex.map(_square, [(i,) for i in range(5)]) == [0, 1, 4, 9, 16]
        with pytest.raises(ValueError, match="task 3 failed"):
            ex.map(_fail, [(3,)])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason="the [ray] extra (the [all] extra installs it)")
    from ray import cloudpickle

    # NOTE: the workers cannot import this test module by name: its task functions travel by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_a_killed_worker_s_task_is_run_again(ray_cluster: None, tmp_path: Path) -> None:
    ex = RayExecutor()
    assert ex.map(_die_once, [(str(tmp_path / "marker"),)]) == [42]
    assert (tmp_path / "marker").read_text() == "died"


def test_ray_gives_the_task_s_own_error(ray_cluster: None) -> None:
    with pytest.raises(ValueError, match="task 7 failed"):
        RayExecutor().map(_fail, [(7,)])


def _sweep(out: Path, executor: object) -> dict[str, dict[str, object]]:
    from onnxq.validation.sweep import sweep

    report = sweep(MODEL, DATA, DATA, out_dir=out, strategies=["dynamic", "static-minmax", "weight-only-int4"],
                   latency_budget_s=0.1, executor=executor)
    return {row["name"]: row for row in report.to_json()["strategies"]}


def test_sweep_under_ray_equals_the_local_one_and_shares_the_model_once(ray_cluster: None, tmp_path: Path) -> None:
    local = _sweep(tmp_path / "local", LocalExecutor(1))
    ex = RayExecutor()
    remote = _sweep(tmp_path / "ray", ex)
    assert sorted(local) == sorted(remote)
    for name, row in local.items():
        assert row["error"] is None and remote[name]["error"] is None, (name, remote[name])
        for key in ("accuracy", "accuracy_drop", "size_bytes"):
            assert remote[name][key] == row[key], (name, key)
        # the same model, written here from the bytes the worker sent back
        assert Path(str(remote[name]["path"])).read_bytes() == Path(str(row["path"])).read_bytes()
    # one object each for the model, the calibration set and the evaluation set: not one per task
    import ray

    assert len(ex.puts) == 3
    assert ray.get(ex.puts[0]) == Path(MODEL).read_bytes()


def test_sensitivity_under_ray_equals_the_serial_one(ray_cluster: None) -> None:
    from onnxq.calibration import calibrate
    from onnxq.calibration.data import CalibrationData
    from onnxq.ir.io import load_model
    from onnxq.quantization import sensitivity as S
    from onnxq.targets import get_target

    model = load_model(MODEL)
    target = get_target("ort-cpu", cpu="avx2")
    feeds = [dict(f) for _, f in CalibrationData.from_source(DATA).feeds(model)]
    variants = S.Variants(model, calibrate(model, feeds[:16]), target, per_channel=True)
    evaluator = S.Evaluator(variants.float_model(), feeds[16:], metric=_mean_top_logit)
    serial = S.analyze(variants, evaluator)
    ex = RayExecutor()
    parallel = S.analyze(variants, evaluator, executor=ex)
    assert [(n.node, n.recovered) for n in parallel.nodes] == [(n.node, n.recovered) for n in serial.nodes]
    assert len(serial.nodes) >= 3 and parallel.uniform_score == serial.uniform_score
    assert len({n.recovered for n in serial.nodes}) == len(serial.nodes)  # NOTE: all measured, all different
    assert len(ex.puts) == 2  # the variants (model, ranges) and the held set, once each


def test_executor_ray_without_ray_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # NOTE: import ray now raises ImportError
    code = main(["sweep", MODEL, "--calib", DATA, "--data", DATA, "--out-dir", str(tmp_path / "out"),
                 "--strategies", "dynamic", "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'onnxq[ray]'" in err[0], err
    assert np.all([not (tmp_path / "out" / "dynamic.onnx").exists()])


def test_compare_sharded_equals_the_serial_one(ray_cluster: None, tmp_path: Path) -> None:
    """Held-set evaluation sharded by samples, on local processes and on Ray: the same figures."""
    from onnxq.validation.compare import compare

    quantized = tmp_path / "q.onnx"
    assert main(["quantize", MODEL, "-o", str(quantized), "--calib", DATA, "-q", "--no-guard"]) == 0
    serial = compare(MODEL, quantized, DATA, layers=False).to_json()
    for executor in (LocalExecutor(2), RayExecutor()):
        with executor:
            sharded = compare(MODEL, quantized, DATA, layers=False, executor=executor).to_json()
        assert sharded["outputs"] == serial["outputs"] and sharded["accuracy"] == serial["accuracy"], executor.name
        assert sharded["samples"] == serial["samples"] == 32
