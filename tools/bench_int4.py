"""Weight-only INT4 and FP16, onnxq beside onnxruntime's ``MatMulNBitsQuantizer``, in one run.

Models:

- ``byte_lm`` (zoo): a byte-level decoder trained here on the stdlib's source; held-out
  perplexity per byte and next-byte accuracy (64 windows of 128 bytes);
- ``bert_like`` (zoo, random weights): mean cosine of the hidden states to PyTorch's FP32;
- ``speed_decoder`` (``--speed-decoder``; made here, random weights, a few hundred MB): latency only.

Variants, each tool in its own subprocess under ``/usr/bin/time -v`` (wall time, peak RSS), from
the same calibration samples (the first ``--samples`` of the model's calibration set):

- ``fp32``; ``fp16`` (``onnxq convert-precision --to fp16``); ``int8-dynamic`` (``onnxq quantize --mode dynamic``);
- ``onnxq-{rtn,gptq,awq,hqq}-b{32,128}``: ``onnxq quantize --mode weight-only --algo A --block-size B
  --no-self-check`` (symmetric, accuracy_level 4);
- ``ort-{rtn,gptq,hqq}-b{32,128}``: ``MatMulNBitsQuantizer`` with ``DefaultWeightOnlyQuantConfig``
  (symmetric), ``GPTQWeightOnlyQuantConfig`` (its defaults: asymmetric, percdamp 0.01) and
  ``HQQWeightOnlyQuantConfig``, all at accuracy_level 4 like onnxq's, on the model as built.

Latency: onnxruntime CPU (ORT_ENABLE_ALL), 1 thread, interleaved medians; ``token`` is batch 1,
sequence 1 (one decoding step without a KV cache: what MatMulNBits is for), ``seq128`` batch 1,
sequence 128. Usage::

    python tools/bench_int4.py [--models byte_lm bert_like] [--speed-decoder] [--quick]

Results go to ``tools/results/bench_int4.json`` and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import benchlib  # noqa: E402

ALGOS = ("rtn", "gptq", "awq", "hqq")
ORT_ALGOS = ("rtn", "gptq", "hqq")
BLOCKS = (32, 128)
ACCURACY_LEVEL = 4


# --- worker: onnxruntime's quantizer in a subprocess ---------------------------------------
def ort_worker(algo: str, block: int, model: str, calib: str, samples: int, output: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if algo == "rtn":
        config: Any = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True,
                                                         accuracy_level=ACCURACY_LEVEL)
    elif algo == "hqq":
        config = nbits.HQQWeightOnlyQuantConfig(block_size=block)
    else:
        with np.load(calib) as data:
            arrays = {k: data[k][:samples] for k in data.files}

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.index = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.index >= samples:
                    return None
                self.index += 1
                return {k: v[self.index - 1:self.index] for k, v in arrays.items()}

            def rewind(self) -> None:
                self.index = 0

        config = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(model), bits=4, block_size=block, is_symmetric=True,
                                           accuracy_level=ACCURACY_LEVEL, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(output, use_external_data_format=False)


# --- the speed-only decoder -------------------------------------------------------------------
def speed_decoder(path: Path) -> Path:
    """A random-weight decoder of a few hundred MB (hidden 1024, 12 layers, FFN 4096, vocab 32000)."""
    if path.exists():
        return path
    import torch

    from models import _export, byte_lm

    torch.manual_seed(0)
    net = byte_lm.Decoder(vocab=32000, hidden=1024, layers=12, heads=16, ffn=4096, context=128)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    net.eval()
    ids = torch.randint(0, 32000, (1, 16))
    exported = _export.export_torch(
        net, (ids,), dynamic_shapes={"input_ids": {0: torch.export.Dim("batch"),
                                                   1: torch.export.Dim("sequence", max=128)}},
        output_names=["logits"])
    import onnxq

    path.parent.mkdir(parents=True, exist_ok=True)
    onnxq.save_model(exported.model, path)
    return path


# --- scoring ----------------------------------------------------------------------------------
def score(name: str, path: Path) -> dict[str, float]:
    from models import zoo

    if name == "byte_lm":
        inputs, labels = zoo.load_eval(name)
        logits = zoo.run_onnx(path, inputs)[0]
        return {"perplexity": zoo.compute_metric("perplexity", logits, labels),
                "next_byte_accuracy": zoo.compute_metric("accuracy", logits, labels)}
    if name == "bert_like":
        return {"cosine": zoo.evaluate(name, path)}
    return {}


def feeds(name: str, length: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000 if name == "bert_like" else 0, 256 if name != "bert_like"
                                            else 30000, size=(1, length)).astype(np.int64)
    if name == "bert_like":
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return {"input_ids": ids}


def latencies(name: str, paths: dict[str, Path], runs: int | None) -> dict[str, dict[str, float]]:
    import onnxruntime as ort

    from onnxq.validation.bench import interleaved_times

    out: dict[str, dict[str, float]] = {label: {} for label in paths}
    for shape, length in (("token", 1), ("seq128", 128)):
        feed = feeds(name, length)
        sessions = {}
        for label, path in paths.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            sessions[label] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        labels = list(sessions)
        times = interleaved_times([lambda s=sessions[k], f=feed: s.run(None, f) for k in labels], runs=runs)
        for label, t in zip(labels, times, strict=True):
            out[label][f"{shape}_ms"] = 1000 * statistics.median(t)
        del sessions
    return out


# --- driver -----------------------------------------------------------------------------------
def bench_model(name: str, source: Path, calib: Path | None, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Path] = {"fp32": source}
    rows: dict[str, dict[str, Any]] = {"fp32": {}}
    commands: dict[str, list[str]] = {
        "fp16": benchlib.onnxq_command("convert-precision", str(source), "--to", "fp16", "-o", str(work / "fp16.onnx")),
        "int8-dynamic": benchlib.onnxq_command("quantize", str(source), "-o", str(work / "int8-dynamic.onnx"),
                                              "--mode", "dynamic", "--no-self-check"),
    }
    speed_only = calib is None
    for block in BLOCKS:
        for algo in ALGOS:
            if speed_only and algo in ("gptq", "awq"):
                continue
            extra = ["--calib", str(calib)] if calib is not None else []
            commands[f"onnxq-{algo}-b{block}"] = benchlib.onnxq_command(
                "quantize", str(source), "-o", str(work / f"onnxq-{algo}-b{block}.onnx"), "--mode", "weight-only",
                "--algo", algo, "--block-size", str(block), "--no-self-check", *extra)
        for algo in ORT_ALGOS:
            if speed_only and algo == "gptq":
                continue
            commands[f"ort-{algo}-b{block}"] = [
                sys.executable, __file__, "--worker", algo, str(block), str(source), str(calib or ""),
                str(args.samples), str(work / f"ort-{algo}-b{block}.onnx")]
    if args.quick:
        commands = {k: v for k, v in commands.items() if "b128" not in k and "hqq" not in k}
    samples_calib = None
    if calib is not None:
        # NOTE: both tools read the same first N samples
        with np.load(calib) as data:
            samples_calib = work / "calib.npz"
            np.savez(samples_calib, **{k: data[k][:args.samples] for k in data.files})
        for label, command in commands.items():
            if "--calib" in command:
                command[command.index("--calib") + 1] = str(samples_calib)
            if label.startswith("ort-"):
                command[command.index(str(calib))] = str(samples_calib)
    for label, command in commands.items():
        print(f"  {name}: {label} ...", flush=True)
        m = benchlib.measure(label, command)
        out = Path(command[command.index("-o") + 1]) if "-o" in command else Path(command[-1])
        rows[label] = {"tool_s": m.wall_s, "tool_rss_mib": m.max_rss_mib, "rc": m.returncode}
        if m.returncode != 0 or not out.exists():
            rows[label]["error"] = (m.stderr.strip().splitlines() or ["?"])[-1][:300]
            continue
        variants[label] = out
    for label, path in variants.items():
        rows[label]["size_mb"] = round(path.stat().st_size / 1e6, 2)
        try:
            rows[label].update(score(name, path))
        except Exception as e:  # noqa: BLE001  # NOTE: a variant onnxruntime cannot run is a result
            rows[label]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    runnable = {k: v for k, v in variants.items() if "error" not in rows[k]}
    for label, lat in latencies(name, runnable, args.runs).items():
        rows[label].update(lat)
    base = rows["fp32"]
    for row in rows.values():
        for key in ("token_ms", "seq128_ms"):
            if key in row and key in base:
                row[key.replace("_ms", "_speedup")] = round(base[key] / row[key], 2)
    return {"model": name, "rows": rows}


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    metric_keys = [k for k in ("perplexity", "next_byte_accuracy", "cosine") if any(k in r for r in rows.values())]
    headers = ["variant", *metric_keys, "size MB", "token ms", "x FP32", "seq128 ms", "x FP32", "tool s", "RSS MiB"]
    body = []
    for label, r in rows.items():
        if "error" in r:
            body.append([label, *(["-"] * (len(headers) - 2)), r["error"][:80]])
            continue
        body.append([label, *(round(r[k], 5) if k in r else "-" for k in metric_keys), r.get("size_mb"),
                     r.get("token_ms") and round(r["token_ms"], 3), r.get("token_speedup"),
                     r.get("seq128_ms") and round(r["seq128_ms"], 2), r.get("seq128_speedup"),
                     r.get("tool_s", "-"), r.get("tool_rss_mib", "-")])
    return f"### {result['model']}\n\n" + benchlib.markdown_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["byte_lm", "bert_like"])
    parser.add_argument("--speed-decoder", action="store_true", help="also the random-weight decoder (latency)")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples for GPTQ / AWQ")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per variant (default adaptive)")
    parser.add_argument("--quick", action="store_true", help="block 32 only, no HQQ")
    parser.add_argument("--work", type=Path, default=TOOLS / "results" / "int4")
    parser.add_argument("--worker", nargs=6, metavar=("ALGO", "BLOCK", "MODEL", "CALIB", "SAMPLES", "OUT"))
    args = parser.parse_args(argv)
    if args.worker:
        algo, block, model, calib, samples, out = args.worker
        ort_worker(algo, int(block), model, calib, int(samples), out)
        return 0
    from models import zoo

    if args.models:
        zoo.ensure_built(args.models)
    results = {"environment": benchlib.environment(), "models": []}
    for name in args.models:
        results["models"].append(bench_model(name, zoo.model_path(name),
                                             zoo.zoo_dir() / f"{name}.calib.npz", args.work / name, args))
        print(table(results["models"][-1]), flush=True)
    if args.speed_decoder:
        path = speed_decoder(args.work / "speed_decoder" / "speed_decoder.onnx")
        results["models"].append(bench_model("speed_decoder", path, None, args.work / "speed_decoder", args))
        print(table(results["models"][-1]), flush=True)
    name = "bench_int4.json" if args.models else "bench_int4_speed_decoder.json"
    benchlib.write_json(benchlib.RESULTS / name, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
