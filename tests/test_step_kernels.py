"""The fused step loop's two step implementations and its numerics.

The compiled path (:func:`cell_forward` / :func:`cell_backward`, what ``trainer.compile``
puts under ``torch.compile``) against the eager in-place loop, values and gradients; the
step functions traced by Dynamo into one graph each; fp32 state and recurrence under bf16
autocast, checked on gradients at T = 70 against the fp32 loop; deterministic mode.
"""

from __future__ import annotations

import pytest
import torch

from rnnlm.dropout import StepLSTM, StepScheme, registered_schemes
from rnnlm.dropout import fused_lstm as fused
from rnnlm.dropout.fused_lstm import FusedMasks, cell_backward, cell_forward

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [(name, mask) for name, s in registered_schemes().items()
            if issubclass(s, StepScheme) and s.fusable for mask in s.masks]
VARIANTS += [("variational", "untied_x")]  # with Gal's per-gate input masks


def layer(kind, mask, i=5, h=7, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    input_rate = 0.0
    if mask.endswith("_x"):
        mask, input_rate = mask[:-2], 0.4
    cell_rate = 0.3 if kind == "zoneout" else 0.0
    return StepLSTM(i, h, kind, 0.4, mask, cell_rate=cell_rate, input_rate=input_rate).to(dtype)


def forward_backward(m, x, h0, c0, masks):
    """Outputs and the gradients of a loss touching out, h_n and c_n, w.r.t. x, h0, c0, weights."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, h0, c0)]
    weights = [p.detach().clone().requires_grad_() for p in m.parameters()]
    out, h_n, c_n = fused.fused_lstm(*leaves, *weights, masks, compiled=m.compiled)
    g = torch.Generator().manual_seed(3)
    loss = (out.float() * torch.randn(out.shape, generator=g, dtype=out.dtype).float()).sum()
    (loss + 2 * h_n.float().sum() - c_n.float().sum()).backward()
    return [out, h_n, c_n], [t.grad for t in (*leaves, *weights)]


@pytest.fixture
def uncompiled_step_functions(monkeypatch):
    """The compiled path's loop with the step functions run as plain PyTorch."""
    monkeypatch.setattr(fused, "compiled_cell", lambda: (cell_forward, cell_backward))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_the_step_functions_compute_what_the_eager_loop_computes(kind, mask, mode, uncompiled_step_functions):
    m = layer(kind, mask)
    masks = m.sample_masks(6, 3) if mode == "train" else (m.expected_masks(6, 3) or {})
    g = torch.Generator().manual_seed(1)
    x, h0, c0 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(6, 3, 5), (3, 7), (3, 7)])
    want_values, want_grads = forward_backward(m, x, h0, c0, masks)
    m.compiled = True
    got_values, got_grads = forward_backward(m, x, h0, c0, masks)
    for got, want in zip(got_values + got_grads, want_values + want_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind,mask", [("variational", "tied"), ("variational", "untied"), ("zoneout", "step")])
def test_the_step_functions_pass_gradcheck(kind, mask, uncompiled_step_functions):
    m = layer(kind, mask, i=3, h=4)
    m.compiled = True
    masks = m.sample_masks(3, 2)
    g = torch.Generator().manual_seed(1)
    x, h0, c0 = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                 for s in [(3, 2, 3), (2, 4), (2, 4)])
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(lambda *a: fused.fused_lstm(*a, masks, compiled=True), (x, h0, c0, *params))


@pytest.mark.parametrize("per_gate,zoneout,mask_g", [(False, False, False), (True, False, False),
                                                     (False, True, False), (False, False, True)])
def test_dynamo_traces_each_step_function_into_one_graph(per_gate, zoneout, mask_g):
    """fullgraph=True: a graph break would raise. Shapes depend on (B, H), never on T."""
    B, H = 3, 4
    z = torch.full((B, H), 0.3) if zoneout else None
    mg = torch.full((B, H), 2.0) if mask_g else None
    mh = torch.full((4, B, H) if per_gate else (B, H), 2.0)
    r = torch.randn(4, B, H) if per_gate else torch.randn(B, 4 * H)
    trace = lambda fn: torch.compile(fn, backend="eager", fullgraph=True, dynamic=False)  # noqa: E731
    act, c, tc, h, hm = trace(cell_forward)(torch.randn(B, 4 * H), r, torch.randn(B, H), torch.randn(B, H),
                                             mh, mg, z, z, torch.float32)
    assert hm.shape == mh.shape and act.shape == (B, 4 * H)
    dgates, low, dc, keep = trace(cell_backward)(r[..., :H] if per_gate else torch.randn(B, H), mh, None,
                                                 torch.randn(B, H), torch.randn(B, H), act, c, tc, mg, z, z,
                                                 torch.float32, per_gate)
    assert dgates.shape == (B, 4 * H) and low.shape == ((4, B, H) if per_gate else (B, 4 * H))
    assert (keep is not None) == zoneout


@pytest.mark.parametrize("kind,mask", [("variational", "tied"), ("variational", "untied"), ("zoneout", "step"),
                                       ("semeniuta", "sequence")])
def test_bf16_keeps_state_and_recurrence_in_fp32_at_seventy_steps(kind, mask, monkeypatch):
    """Under bf16 autocast the GEMMs run in bf16 and everything else in fp32, as cuDNN's LSTM:
    out is bf16, the carried state fp32. At T = 70 every gradient is within a few bf16 roundings
    (2^-9 relative) of the fp32 loop's, and closer than with the cell state and the backward
    recurrence rounded to bf16 at every step (measured: 1.6-1.8x the error)."""
    T, B, I, H = 70, 8, 32, 64
    m = layer(kind, mask, i=I, h=H, dtype=torch.float32)
    masks = m.sample_masks(T, B)
    g = torch.Generator().manual_seed(1)
    x, h0, c0 = torch.randn(T, B, I, generator=g), 0.5 * torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    _, want = forward_backward(m, x, h0, c0, masks)

    def errors():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values, grads = forward_backward(m, x, h0, c0, masks)
        return values, [((got - w).norm() / w.norm()).item() for got, w in zip(grads, want)]

    (out, h_n, c_n), fp32_state = errors()
    assert out.dtype == torch.bfloat16 and h_n.dtype == c_n.dtype == torch.float32
    monkeypatch.setattr(fused, "state_dtype", lambda dtype: dtype)  # state and recurrence in bf16
    _, bf16_state = errors()
    for name, good, worse in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], fp32_state, bf16_state):
        assert good < 6e-3 and good < 0.8 * worse, (name, good, worse)


def test_deterministic_mode_does_not_fill_the_loop_buffers():
    """Deterministic mode fills new tensors with NaN (fill_uninitialized_memory); the loop writes
    every element it allocates, so it opts out inside and the caller's flag is kept."""
    m = layer("zoneout", "step", dtype=torch.float32).train()
    masks = m.sample_masks(5, 3)
    x, h0, c0 = torch.randn(5, 3, 5), torch.randn(3, 7), torch.randn(3, 7)
    want_values, want_grads = forward_backward(m, x, h0, c0, masks)
    filled = []
    real_empty = torch.Tensor.new_empty

    def spy(self, *args, **kwargs):
        filled.append(torch.utils.deterministic.fill_uninitialized_memory)
        return real_empty(self, *args, **kwargs)

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.Tensor, "new_empty", spy)
            got_values, got_grads = forward_backward(m, x, h0, c0, masks)
        assert torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(before)
    assert filled and not any(filled)
    for got, want in zip(got_values + got_grads, want_values + want_grads):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_fused_masks_fields_are_what_the_loop_reads():
    assert FusedMasks._fields == ("h", "g", "zone_h", "zone_c", "x")


@pytest.mark.compile
@pytest.mark.parametrize("kind,mask", [("variational", "tied"), ("variational", "untied"), ("zoneout", "step"),
                                       ("semeniuta", "step")])
def test_inductor_compiled_steps_match_the_eager_loop(kind, mask):
    """The real torch.compile (Inductor): same values and gradients as the eager loop in fp32,
    at two segment lengths (one compile serves both)."""
    m = layer(kind, mask, i=16, h=32, dtype=torch.float32)
    for T in (12, 9):
        masks = m.sample_masks(T, 4)
        g = torch.Generator().manual_seed(T)
        x, h0, c0 = torch.randn(T, 4, 16, generator=g), torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
        m.compiled = False
        want_values, want_grads = forward_backward(m, x, h0, c0, masks)
        m.compiled = True
        got_values, got_grads = forward_backward(m, x, h0, c0, masks)
        for got, want in zip(got_values + got_grads, want_values + want_grads):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
