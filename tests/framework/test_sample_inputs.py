"""Generated sample inputs (``onnxq.runtime.random_inputs`` / ``runnable_inputs``) respect the graph.

Dynamic dims (``-1``, unnamed, symbolic) get usable sizes, integer inputs that index
a table stay below its row count, a model that needs a longer axis gets one, and a
model that cannot run on any generated input stops with a one-line user error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq import runtime
from onnxq.cli import main
from onnxq.errors import UserError
from onnxq.framework.context import PassContext
from onnxq.framework.instrumentation import NumericCheckEach
from onnxq.framework.pipeline import apply
from onnxq.framework.registry import PassRegistry
from tests.conftest import parse

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'

DYNAMIC = HEADER + """
g (float[-1, 8] a, float[batch, seq, 4] b, float[batch, seq, 4] c, float[?, 3, ?] d) => (float[-1, 8] y, float[batch, seq, 4] z, float[?, 3, ?] w) {
  y = Relu(a)
  z = Add(b, c)
  w = Neg(d)
}
"""


def test_dynamic_dims_get_usable_sizes_and_names_agree() -> None:
    model = parse(DYNAMIC)
    feeds = runtime.random_inputs(model)
    # -1 and unnamed dims are dynamic: a leading dim is a batch of 1, the others DYNAMIC_DIM.
    assert feeds["a"].shape == (1, 8)
    assert feeds["b"].shape == feeds["c"].shape == (1, runtime.DYNAMIC_DIM, 4)
    assert feeds["d"].shape == (1, 3, runtime.DYNAMIC_DIM)
    assert runtime.random_inputs(model, dim_values={"seq": 5})["b"].shape == (1, 5, 4)
    out = runtime.run(model, feeds)
    assert out["z"].shape == (1, runtime.DYNAMIC_DIM, 4)
    # Deterministic for a seed.
    again = runtime.random_inputs(model)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)


TOKEN_TYPES = HEADER + """
g (int64[batch, seq] ids, int64[batch, seq] token_type, int32[batch, seq] mask) => (float[batch, seq, 4] y, float[batch, seq] m) {
  words = Constant<value = float[10, 4] {
    0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15., 16., 17., 18., 19.,
    20., 21., 22., 23., 24., 25., 26., 27., 28., 29., 30., 31., 32., 33., 34., 35., 36., 37., 38., 39.}>()
  types = Constant<value = float[2, 4] {1., 2., 3., 4., 5., 6., 7., 8.}>()
  w = Gather(words, ids)
  cast = Cast<to = 7>(token_type)
  minus_one = Constant<value = int64[1] {-1}>()
  flat = Reshape(cast, minus_one)
  t_flat = Gather(types, flat)
  shape = Shape(w)
  t = Reshape(t_flat, shape)
  y = Add(w, t)
  m = Cast<to = 1>(mask)
}
"""


def test_integer_inputs_stay_inside_the_tables_they_index() -> None:
    model = parse(TOKEN_TYPES)
    token_type = model.graph.inputs[1]
    assert runtime.index_bound(token_type) == 2  # through Cast and Reshape
    assert runtime.index_bound(model.graph.inputs[0]) == 10
    assert runtime.index_bound(model.graph.inputs[2]) is None
    for seed in range(5):
        feeds = runtime.random_inputs(model, seed=seed)
        assert feeds["token_type"].min() >= 0 and feeds["token_type"].max() <= 1
        assert feeds["ids"].min() >= 0 and feeds["ids"].max() < runtime.INT_HIGH
        assert feeds["mask"].min() >= 0 and feeds["mask"].max() < runtime.INT_HIGH
    assert set(np.unique(runtime.random_inputs(model)["token_type"])) == {0, 1}
    # The untouched model runs on them, and the numeric check passes through cleanup.
    check = NumericCheckEach()
    apply(model, PassRegistry.default().parse("cleanup"), PassContext(instrumentations=[check]))
    assert check.reference is not None and check.reference["y"].shape == (1, runtime.DYNAMIC_DIM, 4)


REFLECT_PAD = HEADER + """
g (float[batch, samples] audio) => (float[batch, frames] y) {
  pads = Constant<value = int64[4] {0, 100, 0, 100}>()
  padded = Pad<mode = "reflect">(audio, pads)
  y = Relu(padded)
}
"""


def test_a_reflect_pad_gets_an_axis_long_enough() -> None:
    model = parse(REFLECT_PAD)
    with pytest.raises(Exception, match="(?i)pad"):
        runtime.run(model, runtime.random_inputs(model))  # 32 samples < 100 reflected
    feeds, reference = runtime.runnable_inputs(model)
    assert feeds["audio"].shape == (1, runtime.DYNAMIC_DIM_RETRIES[0])
    assert reference["y"].shape == (1, runtime.DYNAMIC_DIM_RETRIES[0] + 200)
    check = NumericCheckEach()
    apply(model, PassRegistry.default().parse("cleanup"), PassContext(instrumentations=[check]))
    assert check.inputs is not None and check.inputs["audio"].shape == feeds["audio"].shape


NEVER_RUNS = HEADER + """
g (float[batch, t] x) => (float[3, 7] y) {
  shape = Constant<value = int64[2] {3, 7}>()
  r = Reshape(x, shape)
  y = Relu(r)
}
"""


def test_a_model_that_fails_on_generated_inputs_is_a_user_error() -> None:
    model = parse(NEVER_RUNS)
    with pytest.raises(runtime.SampleInputError) as info:
        runtime.runnable_inputs(model)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "model itself fails on generated inputs" in message and "--inputs" in message


def test_cli_numeric_check_without_inputs_exits_2_when_the_model_cannot_run(tmp_path: Path, capsys) -> None:
    src = tmp_path / "never.onnx"
    onnx.save(onnx.parser.parse_model(NEVER_RUNS), src)
    code = main(["run", str(src), "-p", "cleanup", "-o", str(tmp_path / "out.onnx"), "--numeric-check-each"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fails on generated inputs" in err[0] and "--inputs" in err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_cli_numeric_check_without_inputs_on_minus_one_dims(tmp_path: Path, capsys) -> None:
    src = tmp_path / "dyn.onnx"
    onnx.save(onnx.parser.parse_model(DYNAMIC), src)
    code = main(["run", str(src), "-p", "cleanup", "-o", str(tmp_path / "out.onnx"), "--numeric-check-each"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(("type_name", "dtype"), [
    ("tensor(float)", np.float32), ("tensor(double)", np.float64), ("tensor(float16)", np.float16),
    ("tensor(bool)", np.bool_), ("tensor(int8)", np.int8), ("tensor(uint8)", np.uint8),
    ("tensor(int16)", np.int16), ("tensor(uint16)", np.uint16), ("tensor(int32)", np.int32),
    ("tensor(uint32)", np.uint32), ("tensor(int64)", np.int64), ("tensor(uint64)", np.uint64)])
def test_one_generator_for_every_dtype(type_name: str, dtype: type) -> None:
    # The benchmark, the converters and random_inputs share runtime.random_array (the benchmark used
    # to read uint16 as int64 from onnxruntime's type string).
    from onnxq.runtime import ort_dtype, random_array
    from onnxq.validation.bench import feeds_for

    assert ort_dtype(type_name) == np.dtype(dtype)
    array = random_array([3, 4], ort_dtype(type_name), np.random.default_rng(0), what="x")
    assert array.dtype == np.dtype(dtype) and array.shape == (3, 4)
    if np.issubdtype(array.dtype, np.integer):
        assert array.min() >= 0 and array.max() < 4

    class Arg:
        name, shape, type = "x", [None, 4], type_name

    class Sess:
        def get_inputs(self) -> list[Arg]:
            return [Arg()]

    assert feeds_for(Sess(), None, where="m")["x"].dtype == np.dtype(dtype)  # type: ignore[arg-type]


def test_strings_cannot_be_generated() -> None:
    from onnxq.errors import OptionError
    from onnxq.runtime import ort_dtype

    with pytest.raises(OptionError, match="supply sample inputs"):
        ort_dtype("tensor(string)")
