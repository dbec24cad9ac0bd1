"""WeightDrop's persistent flat weight buffer: the same values and gradients as calling the
LSTM with ``W_hh * mask`` (the definition), one buffer for every forward, and the layout of the
layer's own flattened parameters (cuDNN's, on CUDA) where they have one."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from rnnlm.dropout import WeightDropLSTM
from rnnlm.dropout.schemes.weight_drop import MASK_SHAPES, FlatWeights

I, H, T, B = 5, 6, 4, 3


def forward_and_grads(layer, x, mask, reference: bool):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    if reference:
        out, (h, c) = functional_call(layer.lstm, {"weight_hh_l0": layer.dropped_weight(mask)}, (x,))
    else:
        out, (h, c) = layer(x, mask=mask)
    (out.pow(2).sum() + h.sum() - c.sum()).backward()
    return [out, h, c, x.grad, *(p.grad for p in layer.lstm.parameters())]


@pytest.mark.parametrize("mask", list(MASK_SHAPES))
def test_the_flat_buffer_computes_the_lstm_with_the_dropped_weight(mask):
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5, mask=mask).double().train()
    m = layer.sample_mask()
    x = torch.randn(T, B, I, dtype=torch.float64)
    got = forward_and_grads(layer, x, m, reference=False)
    want = forward_and_grads(layer, x, m, reference=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


def test_every_forward_writes_the_same_buffer():
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5).train()
    x = torch.randn(T, B, I)
    layer(x)[0].sum().backward()
    buffer = layer.flat_buffer
    address = buffer.data_ptr()
    for _ in range(3):
        layer(x)[0].sum().backward()
        assert layer.flat_buffer is buffer and buffer.data_ptr() == address
    views = layer.flat.views()
    assert all(v.untyped_storage().data_ptr() == address for v in views)
    torch.testing.assert_close(views[0], layer.lstm.weight_ih_l0.detach())  # the latest weights are in it


def test_the_buffer_takes_the_layout_of_flattened_parameters():
    """Parameters that are views of one storage (as flatten_parameters leaves them on CUDA) give
    their offsets to the buffer: here in reverse order, which a one-after-the-other layout would miss."""
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5).train()
    lstm = layer.lstm
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    storage = torch.empty(sum(p.numel() for p in params))
    offset = storage.numel()
    for name, p in zip(lstm._flat_weights_names, params):
        offset -= p.numel()
        view = storage[offset:offset + p.numel()].view_as(p)
        view.copy_(p.detach())
        setattr(lstm, name, torch.nn.Parameter(view))
    params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    want = [p.storage_offset() for p in params]
    assert want == sorted(want, reverse=True)
    x = torch.randn(T, B, I)
    m = layer.sample_mask()
    got = forward_and_grads(layer, x, m, reference=False)
    assert list(layer.flat.offsets) == want and layer.flat_buffer.numel() == storage.numel()
    for g, w in zip(got, forward_and_grads(layer, x, m, reference=True)):
        torch.testing.assert_close(g, w)


def test_the_buffer_is_remade_for_another_dtype_and_unused_in_eval():
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5).train()
    layer(torch.randn(T, B, I))
    first = layer.flat
    layer.double()
    layer(torch.randn(T, B, I, dtype=torch.float64))
    assert layer.flat is not first and layer.flat_buffer.dtype == torch.float64
    assert FlatWeights.layout_key(list(layer.lstm.parameters()))[1] == torch.float64
    layer.eval()
    kept = layer.flat
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], layer.lstm(x)[0], atol=0, rtol=0)  # eval: the raw weights
    assert layer.flat is kept


def test_a_masked_forward_never_swaps_the_lstm_modules_weights(monkeypatch):
    """The kernel runs on the buffer's views; the nn.LSTM keeps its own Parameters, so its
    forward never sees changed weights and never re-flattens them (flatten_parameters)."""
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5).train()
    lstm = layer.lstm
    own = list(lstm._flat_weights)
    flattened = []
    monkeypatch.setattr(type(lstm), "flatten_parameters", lambda self: flattened.append(self))
    for _ in range(2):
        layer(torch.randn(T, B, I))[0].sum().backward()
    layer.eval()
    layer(torch.randn(T, B, I))
    assert flattened == [] and all(a is b for a, b in zip(lstm._flat_weights, own))
    assert all(p.grad is not None for p in lstm.parameters())


def test_hidden_state_in_and_out():
    torch.manual_seed(0)
    layer = WeightDropLSTM(I, H, 0.5).double().train()
    m = layer.sample_mask()
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = (torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64))
    out, (h, c) = layer(x, hx, mask=m)
    want, (wh, wc) = functional_call(layer.lstm, {"weight_hh_l0": layer.dropped_weight(m)}, (x, hx))
    for got, ref in ((out, want), (h, wh), (c, wc)):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
