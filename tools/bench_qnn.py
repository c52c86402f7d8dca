"""QNN HTP table: ``onnxq quantize --target qnn`` beside onnxruntime's own QNN recipe, on the HTP simulator.

Per model (the zoo's CNNs and transformer, and dev-set third-party models once their dynamic dims
are fixed to the calibration samples' shapes), both tools quantize the same FP32 model with the
same calibration samples, A8W8:

- ``onnxq``: ``onnxq.quantize(model, calib, target="qnn")`` (optimize, calibrate, QDQ for the HTP);
- ``onnxq-a16``: the same with 16-bit activations (``target="qnn-a16"``, opset 21);
- ``onnxq-guard``: ``onnxq quantize --target qnn`` as shipped (the guard tries A16W8 when A8W8 is
  below the fidelity floor on the held-back calibration samples); the rung it kept;
- ``ort-qnn``: onnxruntime's recipe for QNN, ``qnn_preprocess_model`` then
  ``get_qnn_qdq_config`` (uint8 activations and weights, its defaults) and ``quantize``, on the
  model with its input shapes fixed (the recipe needs static shapes).

Each result is measured on the HTP simulator that ``onnxruntime-qnn`` ships
(:mod:`onnxq.targets.qnn_htp`): nodes on QNN, whether it loads with the CPU fallback disabled,
and fidelity of the HTP's own outputs to FP32 on onnxruntime CPU over held-out samples (the eval
set): top-1 agreement for class scores, else SQNR; plus the tool's wall time. One run::

    python tools/bench_qnn.py [--models digits_cnn,...] [--samples 64] [--out tools/results/qnn.md]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZOO = ("digits_cnn", "mobilenetv2_digits", "resnet_digits", "keras_cnn_op11", "transformer_digits")
THIRDPARTY = ("fer_emotion", "magika", "ppocr_cls")


def _data(name: str) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    if name in ZOO:
        from models import zoo

        zoo.ensure_built([name])
        folder = Path(zoo.model_path(name)).parent
    else:
        folder = ROOT / "models" / ".cache" / "thirdparty"
    calib = dict(np.load(folder / f"{name}.calib.npz"))
    held = dict(np.load(folder / f"{name}.eval.npz"))
    return folder / f"{name}.onnx", calib, held


def _feeds(arrays: dict[str, np.ndarray], inputs: list[str], n: int) -> list[dict[str, np.ndarray]]:
    count = min(len(arrays[k]) for k in inputs)
    return [{k: arrays[k][i:i + 1] for k in inputs} for i in range(min(n, count))]


def _fixed(path: Path, feed: dict[str, np.ndarray], out: Path) -> Path:
    """The model with every input's shape fixed to ``feed``'s, shapes re-inferred."""
    proto = onnx.load(path)
    for value in proto.graph.input:
        if value.name in feed:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, feed[value.name].shape, strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    del proto.graph.value_info[:]
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.save(proto, out)
    return out


def _ort_qnn(path: Path, calib: list[dict[str, np.ndarray]], out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    prep = out.with_suffix(".prep.onnx")
    source = prep if qnn_preprocess_model(str(path), str(prep)) else path
    config = get_qnn_qdq_config(str(source), Reader(), activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QUInt8)
    quantize(str(source), str(out), config)


def _fidelity(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]]) -> str:
    ref = refs[0][0]
    if ref.ndim == 2 and ref.shape[-1] > 1:
        agree = np.mean([np.argmax(r[0]) == np.argmax(g[0]) for r, g in zip(refs, gots, strict=True)])
        return f"top-1 {agree:.1%}"
    a = np.concatenate([r[0].ravel() for r in refs]).astype(np.float64)
    b = np.concatenate([g[0].ravel() for g in gots]).astype(np.float64)
    noise = float(np.sum((a - b) ** 2))
    return "exact" if noise == 0 else f"{10 * math.log10(float(np.sum(a ** 2)) / noise):.1f} dB"


def measure(name: str, samples: int) -> list[str]:
    import onnxq
    from onnxq import runtime
    from onnxq.ir.io import load_model
    from onnxq.targets import qnn_htp

    path, calib, held = _data(name)
    model = load_model(path)
    inputs = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
    calib_feeds, held_feeds = _feeds(calib, inputs, 64), _feeds(held, inputs, samples)
    float_sess = runtime.session(model)
    refs = [float_sess.run(None, f) for f in held_feeds]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tool in ("onnxq", "onnxq-a16", "onnxq-guard", "ort-qnn"):
            began = time.perf_counter()
            try:
                if tool in ("onnxq", "onnxq-a16"):
                    result, _ = onnxq.quantize(load_model(path), calib_feeds, self_check=False,
                                               target="qnn" if tool == "onnxq" else "qnn-a16")
                elif tool == "onnxq-guard":
                    from onnxq.quantization.guard import quantize_guarded

                    result, _, guard = quantize_guarded(load_model(path), calib_feeds, target="qnn")
                    tool = f"onnxq-guard ({guard.chosen})"
                else:
                    fixed = _fixed(path, calib_feeds[0], Path(tmp) / "fixed.onnx")
                    _ort_qnn(fixed, calib_feeds, Path(tmp) / "ort.onnx")
                    result = ir.load(Path(tmp) / "ort.onnx")
                seconds = time.perf_counter() - began
                offload = qnn_htp.offload(result)
                sess = qnn_htp.htp_session(result)
                gots = [sess.run(None, f) for f in held_feeds]
                rows.append(f"| {name} | {tool} | {offload.on_qnn}/{offload.nodes} | "
                            f"{'yes' if offload.complete else 'no'} | {_fidelity(refs, gots)} | {seconds:.1f} |")
            except Exception as e:  # noqa: BLE001  # a tool that fails is a row of the table
                rows.append(f"| {name} | {tool} | - | failed: {str(e).splitlines()[0][:80]} | - | - |")
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO + THIRDPARTY))
    parser.add_argument("--samples", type=int, default=64, help="held-out samples fidelity is measured on")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    head = ["| model | tool | nodes on QNN | all on HTP (no CPU fallback) | HTP fidelity to FP32 | tool s |",
            "|---|---|--:|---|---|--:|"]
    print("\n".join(head), flush=True)
    rows = [row for name in args.models.split(",") for row in measure(name, args.samples)]
    if args.out:
        args.out.write_text("\n".join(head + rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
