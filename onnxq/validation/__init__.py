"""Validate before shipping: what onnxruntime really runs, is it correct, faithful, fast and small.

- :mod:`onnxq.validation.fusion`: ``fusion_report(model)`` (integer kernels, leftover Q/DQ, every
  QDQ group that stayed float with its reason), ``unfused_groups``, ``remove_unfused_qdq(model, report)``.
- :mod:`onnxq.validation.self_check`: ``self_check(float_model, quant_model, samples, target=...)``
  after quantizing: fusion, latency against float, output and per-layer fidelity, warnings with causes.
- :mod:`onnxq.validation.check`: ``check(model, target="ort-cpu"|"tensorrt")`` (``onnxq check``).
- :mod:`onnxq.validation.bench`: ``bench(models, threads=..., batches=...)`` and ``gate(...)``
  (``onnxq bench``).

Submodules are imported on use; importing this package loads nothing.
"""
