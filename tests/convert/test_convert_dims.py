"""Dynamic-dim naming on ONNX text models: requests, defaults, expressions, conflicts."""

from __future__ import annotations

import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from onnxq.convert.dims import default_name, name_dynamic_dims, parse_requests
from onnxq.errors import ConversionError

TORCH_LIKE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[s77, 4] x, float[s17, s94] y) => (float[s77, 8] z, float[s17, s94] w) {
  c = Concat<axis = 1>(x, x)
  z = Relu(c)
  w = Relu(y)
}
"""

TF_LIKE = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[unk__3, 8, 8, 3] image) => (float[unk__9, 8, 8, 3] out) {
  out = Relu(image)
}
"""


def _model(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def _dims(value: ir.Value) -> list[int | str | None]:
    assert value.shape is not None
    return [d if isinstance(d, int) else d.value for d in value.shape.dims]


def test_requested_names_then_defaults_everywhere() -> None:
    model = _model(TORCH_LIKE)
    mapping = name_dynamic_dims(
        model, parse_requests({"x": "N"}), where="m", layout="nchw", anonymous=r"s\d+"
    )
    assert mapping == {"s77": "N", "s17": "batch", "s94": "seq"}
    x, y = model.graph.inputs
    assert _dims(x) == ["N", 4] and _dims(y) == ["batch", "seq"]
    z, w = model.graph.outputs
    assert _dims(z) == ["N", 8] and _dims(w) == ["batch", "seq"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_expressions_are_renamed_as_whole_words() -> None:
    model = _model(TORCH_LIKE)
    c = model.graph.node(0).outputs[0]
    c.shape = ir.Shape(["2*s77 + s7", 8])
    name_dynamic_dims(model, [], where="m", layout="nchw", anonymous=r"s\d+")
    assert _dims(c) == ["2*batch + s7", 8]


def test_default_names_clash_gets_input_prefix() -> None:
    model = _model(TORCH_LIKE.replace("float[s17, s94] y", "float[s17, 5] y"))
    mapping = name_dynamic_dims(model, [], where="m", layout="nchw", anonymous=r"s\d+")
    assert mapping == {"s77": "batch", "s17": "y_batch"}


def test_tf_layout_and_anonymous_output_dims_forgotten() -> None:
    model = _model(TF_LIKE)
    mapping = name_dynamic_dims(
        model, [], where="m", layout="nhwc", anonymous=r"unk__\d+", forget_other_anonymous=True
    )
    assert mapping == {"unk__3": "batch"}
    assert _dims(model.graph.inputs[0]) == ["batch", 8, 8, 3]
    assert _dims(model.graph.outputs[0]) == [None, 8, 8, 3]


def test_default_name_table() -> None:
    assert default_name(0, 2, "nchw") == "batch"
    assert default_name(1, 3, "nchw") == "seq"
    assert [default_name(i, 4, "nchw") for i in range(4)] == ["batch", "channels", "height", "width"]
    assert [default_name(i, 4, "nhwc") for i in range(4)] == ["batch", "height", "width", "channels"]
    assert default_name(2, 3, "nchw") == "dim2"


def test_parse_requests_forms() -> None:
    assert [str(r) for r in parse_requests(["x=batch", "ids:1=seq", "a:b:0=n"])] == [
        "x=batch",
        "ids:1=seq",
        "a:b:0=n",
    ]
    with pytest.raises(ConversionError, match="expected INPUT=NAME"):
        parse_requests(["x"])
    with pytest.raises(ConversionError, match="identifier"):
        parse_requests({"x": "2batch"})


def test_tf_style_names_with_colons_resolve() -> None:
    (request,) = parse_requests(["serving_default_x:0:1=seq"])
    assert request.resolve(["serving_default_x:0"], where="m") == ("serving_default_x:0", 1)
    (request,) = parse_requests(["serving_default_x:0=batch"])
    assert request.resolve(["serving_default_x:0"], where="m") == ("serving_default_x:0", 0)


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ({"nope": "n"}, r"no input named 'nope' \(inputs: x, y\)"),
        ({"x:1": "n"}, r"axis 1 of 'x' is static \(4\); hint"),
        ({"x:5": "n"}, "has rank 2"),
        ({"x": "N", "y": "N"}, r"already names another dimension \('M'\)"),
        ({"x": "K"}, "already used by another dimension"),
    ],
)
def test_bad_requests_are_named(requests: dict[str, str], message: str) -> None:
    model = _model(TORCH_LIKE.replace("s77", "M").replace("s17", "K"))
    with pytest.raises(ConversionError, match=message):
        name_dynamic_dims(
            model, parse_requests(requests), where="m", layout="nchw", anonymous=r"s\d+", static_hint="hint"
        )


TF_TWO_INPUTS = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[unk__3, 8] image, float[unk__4, 5] m) => (float[unk__9, 8] out, float[unk__7, 5] mask) {
  out = Relu(image)
  mask = Relu(m)
}
"""


def test_one_name_ties_anonymous_dims() -> None:
    model = _model(TF_TWO_INPUTS)
    requests = parse_requests(["image=batch", "m=batch"])
    mapping = name_dynamic_dims(model, requests, where="m", layout="nhwc", anonymous=r"unk__\d+")
    assert mapping == {"unk__3": "batch", "unk__4": "batch"}
    assert [_dims(v)[0] for v in model.graph.inputs] == ["batch", "batch"]
