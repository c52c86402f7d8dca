"""Mixed precision to a 1-point budget, beside uniform INT8 and onnxruntime.quantization, in one run.

For every model (the zoo, plus the third-party models of ``tools/thirdparty.py`` that are
fetched), from the same calibration samples:

- ``fp32``: the model as built;
- ``uniform``: ``onnxq.quantize()`` with default options (static INT8 everywhere it fuses);
- ``mixed``: ``quantize_mixed(max_accuracy_drop=0.01)``, the held set being the model's eval split
  with the zoo metric as the user metric (third-party models: agreement with FP32 on their
  generated eval inputs) -- what ``onnxq quantize --max-accuracy-drop 0.01 --data eval.npz
  --metric ...`` does;
- ``ort-static``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax, its defaults).

Reported: metric and drop against FP32 (zoo metric on the whole eval split; third-party: top-1
agreement / cosine with FP32), speedup over FP32 (1 thread, batch 1, interleaved medians), compute
nodes in float, and the mixed search's cost (sensitivity wall time and evaluations, search
evaluations, total wall time). A curve PNG is written for every model where nodes moved to float.
NOTE: the search scores on the eval split it is reported on (as a user passing ``--data`` would);
the zoo's eval splits are held out from calibration.

Usage::

    python tools/bench_mixed.py [--models crnn_ocr fer_emotion ...] [--per-tensor] [--runs 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import benchlib  # noqa: E402
from bench_quantize import _load_error, latencies, ort_worker, write_calib_folder  # noqa: E402

BUDGET = 0.01


def agreement(reference: Sequence[np.ndarray]) -> Callable[[Sequence[np.ndarray], Any], float]:
    """Top-1 agreement with FP32 (last axis > 1), else mean cosine, on output 0."""
    ref = np.asarray(reference[0])

    def metric(outputs: Sequence[np.ndarray], labels: Any = None) -> float:
        out = np.asarray(outputs[0]).reshape(ref.shape)
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            return float(np.mean(ref.argmax(-1) == out.argmax(-1)))
        a, b = ref.reshape(len(ref), -1).astype(np.float64), out.reshape(len(out), -1).astype(np.float64)
        return float(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                                            1e-30)))

    metric.__name__ = "agreement_with_fp32"
    return metric


def _run_all(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from models import zoo

    return zoo.run_onnx(path, inputs)


def source(name: str) -> dict[str, Any]:
    from models import zoo

    if name in zoo.load_manifest():
        info = zoo.entry(name)
        kind, index = info["metric"]["kind"], info["metric"].get("output", 0)

        def zoo_metric(outputs: Sequence[np.ndarray], labels: Any) -> float:
            return zoo.compute_metric(kind, np.asarray(outputs[index]), labels)

        zoo_metric.__name__ = info["metric"]["name"]
        evals, labels = zoo.load_eval(name)
        return {"onnx": zoo.model_path(name), "calib": zoo.load_calib(name), "eval": evals, "labels": labels,
                "metric": zoo_metric, "score": lambda p: zoo.evaluate(name, p)}
    import thirdparty  # tools/thirdparty.py

    path = thirdparty.fetch(name)
    with np.load(path.with_suffix(".calib.npz")) as data:
        calib = {k: data[k] for k in data.files}
    with np.load(path.with_suffix(".eval.npz")) as data:
        evals = {k: data[k] for k in data.files}
    metric = agreement(_one_by_one(path, evals))
    return {"onnx": path, "calib": calib, "eval": evals, "labels": None, "metric": metric,
            "score": lambda p: metric(_one_by_one(p, evals))}


def _one_by_one(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs sample by sample (third-party models may fix batch 1 or vary shapes)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    count = min(len(v) for v in inputs.values())
    runs = [sess.run(None, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(count)]
    return [np.concatenate([r[j] for r in runs]) for j in range(len(runs[0]))]


def _compute_ops(path: Path) -> tuple[int, int]:
    """(compute nodes, of which running on int8 kernels) in onnxruntime's optimized graph."""
    import onnx_ir as ir

    from onnxq.validation.fusion import fusion_report

    report = fusion_report(ir.load(path))
    return len(report.fused) + len(report.unfused), len(report.fused)


def bench_model(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import onnx_ir as ir

    from onnxq.quantization.mixed_precision import plot_curve, quantize_mixed
    from onnxq.quantization.quantize import quantize

    work.mkdir(parents=True, exist_ok=True)
    src = source(name)
    per_channel = not args.per_tensor
    count = min(args.calib_samples, min(len(v) for v in src["calib"].values()))
    calib = {k: v[:count] for k, v in src["calib"].items()}
    evals = dict(src["eval"])
    if src["labels"] is not None:
        evals["labels"] = src["labels"]
    eval_path = work / "eval.npz"
    np.savez(eval_path, **evals)  # type: ignore[arg-type]
    paths = {"fp32": Path(src["onnx"])}
    result: dict[str, Any] = {"variants": {}}

    start = time.perf_counter()
    model, _ = quantize(ir.load(paths["fp32"]), calib, per_channel=per_channel)
    paths["uniform"] = work / "uniform.onnx"
    ir.save(model, paths["uniform"])
    result["variants"]["uniform"] = {"wall_s": time.perf_counter() - start}

    start = time.perf_counter()
    model, mixed = quantize_mixed(ir.load(paths["fp32"]), calib, max_accuracy_drop=BUDGET, per_channel=per_channel,
                                  data=eval_path, metric=src["metric"], cache_dir=work / "cache",
                                  progress=sys.stderr.isatty())
    paths["mixed"] = work / "mixed.onnx"
    ir.save(model, paths["mixed"])
    result["variants"]["mixed"] = {"wall_s": time.perf_counter() - start}
    result["mixed"] = mixed.to_json()
    if mixed.float_nodes:
        plot_curve(mixed, work / "curve.png")
        result["curve_png"] = str((work / "curve.png").relative_to(REPO))

    start = time.perf_counter()
    folder = write_calib_folder(calib, work / "calib", count)
    try:
        ort_worker("minmax", str(paths["fp32"]), str(folder), str(work / "ort_static.onnx"))
        wall = time.perf_counter() - start
        error = _load_error(work / "ort_static.onnx")
        if error:
            result["variants"]["ort-static"] = {"error": f"onnxruntime cannot load it: {error[:160]}"}
        else:
            paths["ort-static"] = work / "ort_static.onnx"
            result["variants"]["ort-static"] = {"wall_s": wall}
    except Exception as e:  # noqa: BLE001  # a peer's failure is a result, not a crash
        result["variants"]["ort-static"] = {"error": str(e).splitlines()[0][:200]}

    feed = {k: v[:1] for k, v in src["eval"].items()}
    ms = latencies(paths, feed, threads=1, runs=args.runs)
    for label, path in paths.items():
        row = result["variants"].setdefault(label, {})
        row["metric"] = float(src["score"](path))
        row["ms_1t"] = ms[label]
        if label != "fp32":
            row["compute_nodes"], row["int8_nodes"] = _compute_ops(path)
    base = result["variants"]["fp32"]
    for row in result["variants"].values():
        if "metric" in row:
            row["drop"] = base["metric"] - row["metric"]
            row["speedup"] = base["ms_1t"] / row["ms_1t"]
    return result


def table(results: dict[str, Any]) -> str:
    headers = ["model", "variant", "metric", "drop", "x fp32 (1t)", "int8/compute", "float kept",
               "sens. s / evals", "search evals", "wall s"]
    rows = []
    for name, result in results.items():
        mixed = result.get("mixed", {})
        for label, row in result["variants"].items():
            if "error" in row:
                rows.append([name, label, "error", row["error"], "", "", "", "", "", ""])
                continue
            sens = mixed.get("sensitivity") if label == "mixed" else None
            rows.append([
                name, label, f"{row['metric']:.4f}", f"{row['drop']:+.4f}", f"{row['speedup']:.2f}",
                f"{row.get('int8_nodes', '')}/{row.get('compute_nodes', '')}" if label != "fp32" else "",
                str(len(mixed.get("float_nodes", []))) if label == "mixed" else "",
                f"{sens['seconds']:.1f} / {sens['evaluations']}" if sens else ("0 / 0" if label == "mixed" else ""),
                str(mixed.get("search_evaluations", "")) if label == "mixed" else "",
                f"{row.get('wall_s', 0):.1f}" if label != "fp32" else "",
            ])
    return benchlib.markdown_table(headers, rows)


def summary(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, result in results.items():
        v = result["variants"]
        uniform, mixed = v["uniform"], v["mixed"]
        doc = result["mixed"]
        floats = ", ".join(f"{f['node']} ({f['recovered']:+.3f})" for f in doc["float_nodes"]) or "none"
        lines.append(f"- {name}: uniform drop {uniform['drop']:+.4f} ({uniform['speedup']:.2f}x); mixed drop "
                     f"{mixed['drop']:+.4f} ({mixed['speedup']:.2f}x), "
                     f"{'within' if mixed['drop'] <= BUDGET + 1e-9 else 'OUTSIDE'} the budget; in float: {floats}")
    costs = [(len(r["mixed"]["sensitivity"]["nodes"]), r["mixed"]["sensitivity"]["seconds"],
              r["mixed"]["sensitivity"]["evaluations"]) for r in results.values() if r["mixed"].get("sensitivity")]
    if costs:
        per_node = statistics.median(s / max(n, 1) for n, s, _ in costs)
        lines.append(f"- sensitivity cost: evaluations = candidates + 1; median {per_node:.2f} s per candidate node "
                     f"(linear in the node count): " + ", ".join(f"{n} nodes {s:.1f} s" for n, s, _ in costs))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="zoo or third-party model names (default: all)")
    parser.add_argument("--runs", type=int, default=36, help="timed runs per variant")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights for every variant of onnxq")
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS / "bench_mixed.json")
    args = parser.parse_args()
    from models import zoo

    names = args.models or [*sorted(zoo.load_manifest()), *_thirdparty_names()]
    results: dict[str, Any] = {}
    work_root = benchlib.RESULTS / "mixed"
    for name in names:
        print(f"{name}:", file=sys.stderr)
        results[name] = bench_model(name, work_root / (name + ("-per-tensor" if args.per_tensor else "")), args)
    print(table(results))
    print()
    lines = summary(results)
    print("\n".join(lines))
    if warning := benchlib.busy_warning():
        print(f"\n{warning}")
    benchlib.write_json(args.out, {"environment": benchlib.environment(), "per_tensor": args.per_tensor,
                                   "results": results, "summary": lines})
    return 0


def _thirdparty_names() -> list[str]:
    try:
        import thirdparty
    except ImportError:
        return []
    return list(getattr(thirdparty, "MODELS", ()))


if __name__ == "__main__":
    sys.exit(main())
