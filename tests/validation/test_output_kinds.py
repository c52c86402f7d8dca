"""Output kinds pick the fidelity measure: class scores, CTC sequences, everything else."""

from __future__ import annotations

import numpy as np
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from onnxq.validation import output_kinds as kinds
from onnxq.validation.self_check import _fidelity

HEADS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 16] x, float[T, N, 16] s, float[N, 3, 8, 8] img, float[N, 5, 16] tok)
  => (float[N, 10] scores, float[N, 10] probs, float[N, 16] emb, float[T, N, 10] ctc, float[N, 10] written,
      float[N, 10] multi, float[N, 10] stable, float[N, 4] pooled, float[N, 16] meanemb) {
  l = Gemm<transB=1>(x, w, b)
  scores = Identity(l)
  probs = Softmax(l)
  n = ReduceL2<keepdims=1>(x)
  emb = Div(x, n)
  m = MatMul(s, w2)
  ctc = LogSoftmax(m)
  e = Exp(l)
  z = ReduceSum<keepdims=1>(e)
  written = Div(e, z)
  multi = Sigmoid(l)
  mx = ReduceMax<keepdims=1>(l)
  d = Sub(l, mx)
  e2 = Exp(d)
  z2 = ReduceSum<keepdims=1>(e2)
  stable = Div(e2, z2)
  c = Conv(img, wc)
  pooled = ReduceMean<axes=[2, 3], keepdims=0>(c)
  h = MatMul(tok, w3)
  meanemb = ReduceMean<axes=[1], keepdims=0>(h)
} <float[10, 16] w = {0}, float[10] b = {0}, float[16, 10] w2 = {0}>"""


def test_kinds_from_the_graph() -> None:
    text = HEADS.replace(" <float[10, 16] w = {0}, float[10] b = {0}, float[16, 10] w2 = {0}>", "")
    proto = onnx.parser.parse_model(text)
    for name, shape in (("w", (10, 16)), ("b", (10,)), ("w2", (16, 10)), ("wc", (4, 3, 1, 1)), ("w3", (16, 16))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(shape, np.float32), name))
    found = kinds.output_kinds(ir.from_proto(proto))
    assert found == {"scores": kinds.CLASS_SCORES, "probs": kinds.CLASS_SCORES, "emb": kinds.TENSOR,
                     "ctc": kinds.SEQUENCE, "written": kinds.CLASS_SCORES, "multi": kinds.TENSOR,
                     "stable": kinds.CLASS_SCORES, "pooled": kinds.CLASS_SCORES, "meanemb": kinds.TENSOR}


def test_declared_rank_is_settled_on_the_real_arrays() -> None:
    # a CTC head declared [1, seqlen] really returns [T, 1, C]
    assert kinds.kind_of_arrays(kinds.CLASS_SCORES, [np.zeros((24, 1, 30))]) == kinds.SEQUENCE
    assert kinds.kind_of_arrays(kinds.SEQUENCE, [np.zeros((4, 30))]) == kinds.CLASS_SCORES
    assert kinds.kind_of_arrays(kinds.TENSOR, [np.zeros((4, 30))]) == kinds.TENSOR


def _ctc(labels: list[int], classes: int = 6, blank: int = 0) -> np.ndarray:
    out = np.full((len(labels), 1, classes), -5.0, np.float32)
    for t, c in enumerate(labels):
        out[t, 0, c] = 5.0
    return out


@pytest.mark.parametrize(("got", "agree"), [
    ([0, 3, 3, 0, 0, 2, 0], 1.0),   # same decoding: blanks and repeats move, the text stays "3 2"
    ([0, 3, 0, 3, 0, 2, 0], 0.0),   # "3 3 2": one more character
    ([0, 3, 3, 0, 0, 4, 0], 0.0),   # "3 4"
])
def test_sequence_agreement_decodes_ctc(got: list[int], agree: float) -> None:
    ref = [_ctc([0, 3, 0, 0, 2, 2, 0])]
    assert kinds.sequence_agreement(ref, [_ctc(got)]) == agree
    fid = _fidelity("ctc", ref, [_ctc(got)], kinds.SEQUENCE)
    assert fid.sequence_agreement == agree and fid.top1_agreement is None


def test_embeddings_get_no_argmax_measure() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 384)).astype(np.float32)
    fid = _fidelity("emb", [ref], [ref + 0.01], kinds.TENSOR)
    assert fid.top1_agreement is None and fid.sequence_agreement is None and fid.cosine > 0.99


def test_a_flip_where_fp32_itself_is_undecided_is_a_tie_not_a_disagreement() -> None:
    # FP32 logits: row 0 prefers class 0 over class 1 by 0.2 (odds 1.2:1), row 1 by 2.0 (7.4:1)
    ref = np.array([[2.0, 1.8, -3.0], [3.0, 1.0, -3.0]])
    got = np.array([[1.9, 2.0, -3.0], [1.0, 3.0, -3.0]])  # both rows flip to class 1
    assert kinds.top1_agreement([ref], [got]) == 0.5  # only the decided row counts against
    assert kinds.top1_agreement([ref], [got], tie=0.0) == 0.0  # exact arg-max
    # the same rows as probabilities: the gap is measured as log(p_own / p_theirs)
    probs = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    assert kinds.top1_agreement([probs], [got]) == 0.5
    fid = _fidelity("scores", [ref], [got], kinds.CLASS_SCORES)
    assert fid.top1_agreement == 0.5 and fid.exact_agreement == 0.0


def test_a_sequence_changed_only_at_fp32_ties_agrees() -> None:
    ref = _ctc([0, 3, 0, 0, 2, 2, 0])
    ref[4, 0, 4] = 4.9  # step 4: FP32 prefers 2 over 4 by 0.1
    tied, decided = _ctc([0, 3, 0, 0, 4, 2, 0]), _ctc([0, 3, 0, 0, 2, 2, 4])  # step 6: by 10
    assert kinds.sequence_agreement([ref], [tied]) == 1.0
    assert kinds.sequence_agreement([ref], [tied], tie=0.0) == 0.0
    assert kinds.sequence_agreement([ref], [decided]) == 0.0
    fid = _fidelity("ctc", [ref], [tied], kinds.SEQUENCE)
    assert fid.sequence_agreement == 1.0 and fid.exact_agreement == 0.0
