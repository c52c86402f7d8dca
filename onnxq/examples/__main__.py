"""``python -m onnxq.examples model|inputs`` prints the path of a bundled example file."""

from __future__ import annotations

import sys

from onnxq.examples import example_inputs_path, example_model_path

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "model"
    paths = {"model": example_model_path, "inputs": example_inputs_path}
    if which not in paths:
        sys.exit("usage: python -m onnxq.examples model|inputs")
    print(paths[which]())
