"""Benchmark model zoo: scripts that train/export the models onnxq is measured on.

Not part of the installed package. Build with ``python models/build.py``; read results
with :mod:`models.zoo`. Everything is trained on data shipped inside scikit-learn (the
8x8 digits set) or generated, so the build needs no network.
"""
