"""The private oneDNN ops behind the fused LSTM loop (rnnlm/dropout/mkldnn_linear.py).

On a CPU build of torch with oneDNN the ops must be there: if a torch upgrade removes or
changes them, the fused loop silently runs on the slower ``torch.mm`` fallback, so
:func:`test_ops_are_present_where_onednn_is` fails instead. The fast path and the fallback
must give the same numbers, op by op and through the fused loop, forward and backward.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from rnnlm.dropout import mkldnn_linear
from rnnlm.dropout.fused_lstm import fused_lstm

pytestmark = pytest.mark.usefixtures("one_thread")

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                            reason="this torch build has no oneDNN (mkldnn): the fallback is the only path")


@contextmanager
def fallback():
    """Every GEMM of mkldnn_linear on the plain-PyTorch fallback (oneDNN switched off)."""
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved


@onednn
def test_ops_are_present_where_onednn_is():
    for op in ("_reorder_linear_weight", "_linear_pointwise"):
        assert hasattr(torch.ops.mkldnn, op), (
            f"torch {torch.__version__} has oneDNN but no torch.ops.mkldnn.{op}: the fused LSTM "
            "loop now runs its GEMMs on the torch.mm fallback (slower, see docs/performance.md); "
            "port rnnlm/dropout/mkldnn_linear.py to what this torch offers")
    mkldnn_linear.ops_available.cache_clear()
    assert mkldnn_linear.ops_available(), (
        f"torch {torch.__version__}: torch.ops.mkldnn's prepacked linear fails its probe "
        "(signature or result changed); the fused LSTM loop runs on the torch.mm fallback")


@onednn
def test_one_place_selects_the_path():
    w = torch.randn(8, 4)
    assert mkldnn_linear.use_mkldnn(w)
    assert not mkldnn_linear.use_mkldnn(w.double())
    with fallback():
        assert not mkldnn_linear.use_mkldnn(w)


@onednn
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_the_fallback(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 40, generator=g)
    w = torch.randn(64, 40, generator=g)
    b = torch.randn(64, generator=g) if bias else None
    # as the fused loop calls it: row-major, column-major (a transpose) and a column block
    cases = [(x, w), (x, w.t().contiguous().t()), (x, w[:32]), (x.t().contiguous().t(), w)]
    assert mkldnn_linear.use_mkldnn(w)
    for xx, ww in cases:
        bb = None if b is None else b[:ww.shape[0]]
        got = mkldnn_linear.linear(xx, ww, bb)
        with fallback():
            want = mkldnn_linear.linear(xx, ww, bb)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(want, torch.nn.functional.linear(xx, ww, bb))


@onednn
def test_prepacked_linear_matches_the_fallback():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4 * 48, 48, generator=g)
    assert mkldnn_linear.use_mkldnn(w)
    for weight in (w, w.t(), w[:48]):  # the forward's W_hh, the backward's W_hh^T, a gate block
        x = torch.randn(20, weight.shape[1], generator=g)
        got = mkldnn_linear.prepacked_linear(weight, 20)(x)
        with fallback():
            want = mkldnn_linear.prepacked_linear(weight, 20)(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@onednn
@pytest.mark.parametrize("masks", ["none", "tied", "untied", "untied_x"])
def test_fused_loop_on_the_ops_matches_the_fallback_forward_and_backward(masks):
    T, B, I, H = 8, 20, 24, 48
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    def mask(*shape):
        return (torch.rand(*shape, generator=g) >= 0.5).float() * 2

    tensors = [rand(T, B, I), rand(B, H), rand(B, H),
               rand(4 * H, I) / 5, rand(4 * H, H) / 7, rand(4 * H), rand(4 * H)]
    m = {"none": {}, "tied": {"h": mask(B, H)}, "untied": {"h": mask(4, B, H)},
         "untied_x": {"h": mask(4, B, H), "x": mask(4, B, I)}}[masks]
    weights = torch.linspace(-1, 1, T * B * H).view(T, B, H)

    def outputs_and_grads():
        leaves = [t.clone().requires_grad_() for t in tensors]
        out, h_n, c_n = fused_lstm(*leaves, m)
        loss = (out * weights).sum() + (h_n ** 2).sum() + 3 * c_n.sum()
        return [out.detach(), h_n.detach(), c_n.detach(), *torch.autograd.grad(loss, leaves)]

    assert mkldnn_linear.use_mkldnn(tensors[4])
    got = outputs_and_grads()
    with fallback():
        want = outputs_and_grads()
    for k, (u, v) in enumerate(zip(got, want)):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4, msg=lambda s: f"item {k}: {s}")


def test_gemm_operands_are_row_or_column_major():
    """oneDNN runs a much slower reference kernel on other strides (a column block)."""
    m = torch.randn(6, 8)
    assert mkldnn_linear.dense(m) is m and mkldnn_linear.dense(m.t()).data_ptr() == m.data_ptr()  # no copy
    block = m[:, 2:5].t()
    assert mkldnn_linear.dense(block).is_contiguous() and torch.equal(mkldnn_linear.dense(block), block)


def test_backend_probe_does_not_consume_the_global_rng():
    """Resumed runs must draw the same masks as uninterrupted ones."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    mkldnn_linear.ops_available.cache_clear()
    mkldnn_linear.ops_available()
    assert torch.equal(torch.rand(3), expected)


def test_missing_ops_fall_back_with_one_warning(monkeypatch, caplog):
    """A oneDNN build whose ops vanished still computes x @ w.T (torch.mm), and says so once."""
    monkeypatch.setattr(mkldnn_linear, "ops_available", lambda: False)
    mkldnn_linear._warn_missing_ops.cache_clear()
    w, x = torch.randn(6, 4), torch.randn(3, 4)
    with caplog.at_level("WARNING", logger=mkldnn_linear.__name__):
        for _ in range(3):
            assert not mkldnn_linear.use_mkldnn(w)
            torch.testing.assert_close(mkldnn_linear.prepacked_linear(w, 3)(x), x @ w.t())
    warned = [r for r in caplog.records if "prepacked linear ops" in r.getMessage()]
    assert len(warned) == (1 if torch.backends.mkldnn.is_available() else 0)
    mkldnn_linear._warn_missing_ops.cache_clear()
