"""Tiny hand-built QDQ graphs shared by the validation tests."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tests.conftest import parse


def _ints(n: int, mod: int = 7) -> str:
    return ",".join(str((i % mod) - mod // 2) for i in range(n))


#: Conv -> Relu -> Q(zp 0) -> MaxPool -> Reshape -> MatMul -> Q: every group fuses.
FUSES = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,3,8,8] x) => (float[1,10] y) <
  float s = {{0.02}}, uint8 zp = {{0}}, float so = {{0.1}}, uint8 zpo = {{128}},
  int8[4,3,3,3] w = {{{_ints(108)}}}, float ws = {{0.01}}, int8 wzp = {{0}},
  int8[64,10] wm = {{{_ints(640, 5)}}}, int64[2] shp = {{1, 64}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  c = Conv <pads=[1,1,1,1]> (xd, wd)
  r = Relu(c)
  rq = QuantizeLinear(r, s, zp)
  rd = DequantizeLinear(rq, s, zp)
  p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (rd)
  pq = QuantizeLinear(p, s, zp)
  pd = DequantizeLinear(pq, s, zp)
  f = Reshape(pd, shp)
  fq = QuantizeLinear(f, s, zp)
  fd = DequantizeLinear(fq, s, zp)
  wmd = DequantizeLinear(wm, ws, wzp)
  mm = MatMul(fd, wmd)
  mq = QuantizeLinear(mm, so, zpo)
  y = DequantizeLinear(mq, so, zpo)
}}
"""

#: The same Conv -> Relu, but the Q after the Relu has zero point 128: the Conv stays float.
RELU_ZP128 = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) <
  float s = {{0.02}}, uint8 zp = {{0}}, uint8 zp128 = {{128}},
  int8[4,3,3,3] w = {{{_ints(108)}}}, float ws = {{0.01}}, int8 wzp = {{0}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  conv = Conv <pads=[1,1,1,1]> (xd, wd)
  r = Relu(conv)
  rq = QuantizeLinear(r, s, zp128)
  y = DequantizeLinear(rq, s, zp128)
}}
"""

#: A lone Q/DQ pair on each side of a LayerNormalization, which has no integer kernel.
LAYERNORM = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,16] x) => (float[2,16] y) <float s = {0.05}, uint8 zp = {128}, float[16] gamma = {1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1}> {
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  ln = LayerNormalization <axis=-1> (xd, gamma)
  lq = QuantizeLinear(ln, s, zp)
  y = DequantizeLinear(lq, s, zp)
}
"""

#: An Add whose second input is float, and a MatMul with per-channel weights on axis 0 (K).
MIXED = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,8] x, float[2,8] b) => (float[2,4] y) <
  float s = {{0.05}}, uint8 zp = {{128}}, int8[8,4] w = {{{_ints(32)}}},
  float[8] ws = {{0.01,0.01,0.01,0.01,0.02,0.02,0.02,0.02}}, int8[8] wzp = {{0,0,0,0,0,0,0,0}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  a = Add(xd, b)
  aq = QuantizeLinear(a, s, zp)
  ad = DequantizeLinear(aq, s, zp)
  wd = DequantizeLinear <axis=0> (w, ws, wzp)
  mm = MatMul(ad, wd)
  mq = QuantizeLinear(mm, s, zp)
  y = DequantizeLinear(mq, s, zp)
}}
"""


def model(text: str) -> ir.Model:
    """The graph as an onnx_ir model, each node named ``<op>_<index>``."""
    m = parse(text)
    for i, node in enumerate(m.graph):
        node.name = f"{node.op_type}_{i}"
    return m


def feeds(m: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in m.graph.inputs:
        assert v.shape is not None and v.name is not None
        out[v.name] = rng.uniform(-1, 1, [int(d) for d in v.shape]).astype(np.float32)
    return out


#: One quantized input read by a MatMul (fuses) and a LayerNormalization (stays float).
SHARED = f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,8] x) => (float[2,4] y, float[2,8] z) <
  float s = {{0.05}}, uint8 zp = {{128}}, int8[8,4] w = {{{_ints(32)}}}, float ws = {{0.01}}, int8 wzp = {{0}},
  float[8] gamma = {{1,1,1,1,1,1,1,1}}> {{
  xq = QuantizeLinear(x, s, zp)
  xd = DequantizeLinear(xq, s, zp)
  wd = DequantizeLinear(w, ws, wzp)
  mm = MatMul(xd, wd)
  mq = QuantizeLinear(mm, s, zp)
  y = DequantizeLinear(mq, s, zp)
  ln = LayerNormalization <axis=-1> (xd, gamma)
  lq = QuantizeLinear(ln, s, zp)
  z = DequantizeLinear(lq, s, zp)
}}
"""


def float_twin(text: str) -> ir.Model:
    """The QDQ graph with weight DQs folded into float initializers and activation Q/DQ pairs dropped."""
    m = model(text)
    graph = m.graph
    for node in list(graph):
        if node.op_type == "DequantizeLinear" and node.inputs[0].const_value is not None:
            q, s, z = (v.const_value.numpy() for v in node.inputs[:3])
            weight = ir.Value(name=f"{node.outputs[0].name}_float",
                              const_value=ir.tensor((q.astype(np.float32) - z.astype(np.float32)) * s))
            graph.register_initializer(weight)
            node.outputs[0].replace_all_uses_with(weight)
            graph.remove(node, safe=True)
    for node in list(graph):
        if node.op_type != "QuantizeLinear":
            continue
        source = node.inputs[0]
        for use in list(node.outputs[0].uses()):
            out = use.node.outputs[0]
            if out.is_graph_output():
                index, name = list(graph.outputs).index(out), out.name
                out.name = f"{name}_qdq"
                graph.outputs[index] = source
                source.name, source.type, source.shape = name, out.type, out.shape
            out.replace_all_uses_with(source)
            graph.remove(use.node, safe=True)
        graph.remove(node, safe=True)
    return m


#: A fused Add whose Relu is absorbed into the Q, read by a float ReduceMean.
ADD_RELU_MEAN = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,4,4,4] a, float[1,4,4,4] b) => (float[1,4,1,1] y) <float s = {0.02}, uint8 zp = {0}, int64[2] axes = {2, 3}> {
  aq = QuantizeLinear(a, s, zp)
  ad = DequantizeLinear(aq, s, zp)
  bq = QuantizeLinear(b, s, zp)
  bd = DequantizeLinear(bq, s, zp)
  sum = Add(ad, bd)
  r = Relu(sum)
  rq = QuantizeLinear(r, s, zp)
  rd = DequantizeLinear(rq, s, zp)
  y = ReduceMean(rd, axes)
}
"""
