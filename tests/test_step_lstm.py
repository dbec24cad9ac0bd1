"""StepLSTM: the step-loop LSTM with per-sample recurrent dropout.

Checked against ``nn.LSTM`` (no dropout), against hand-computed cases of each paper's
definition, and the fused loop against ``plain_lstm``, the defining equations written one
gate at a time in plain PyTorch (values and gradients). The schemes come from the registry,
so a new step scheme is checked by the generic tests here without being listed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnlm.dropout import StepLSTM, StepScheme, get_scheme, plain_lstm, registered_schemes
from rnnlm.dropout.fused_lstm import fused_lstm

T, B, I, H = 6, 4, 5, 7


pytestmark = pytest.mark.usefixtures("one_thread")

STEP_SCHEMES = {name: s for name, s in registered_schemes().items() if issubclass(s, StepScheme)}
VARIANTS = [(name, mask) for name, s in STEP_SCHEMES.items() for mask in s.masks] + [
    (name, f"{mask}_x") for name, s in STEP_SCHEMES.items() for mask in s.per_gate_input_masks
]  # (kind, mask); "<mask>_x": with per-gate input masks (Gal's LM code: per-gate masks on x_t)
FUSABLE = [(kind, mask) for kind, mask in VARIANTS if STEP_SCHEMES[kind].fusable]


def make(kind="variational", mask="tied", rate=0.5, cell_rate=0.0, dtype=torch.float32,
         seed=0, i=I, h=H):
    torch.manual_seed(seed)
    if not get_scheme(kind).uses_cell_rate:
        cell_rate = 0.0
    elif cell_rate == 0.0:
        cell_rate = 0.3
    input_rate = 0.0
    if mask.endswith("_x"):  # per-gate input masks at the recurrent rate
        mask, input_rate = mask[:-2], rate
    return StepLSTM(i, h, kind, rate, mask, cell_rate=cell_rate, input_rate=input_rate).to(dtype)


def inputs(dtype=torch.float32, seed=1, t=T, b=B, i=I, h=H):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, b, i, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, b, h, generator=g, dtype=dtype, requires_grad=True)
    c0 = torch.randn(1, b, h, generator=g, dtype=dtype, requires_grad=True)
    return x, h0, c0


def reference(m, x, h0, c0, masks=None):
    """The defining equations of ``m``'s scheme, gate by gate, in plain PyTorch: ``plain_lstm``
    with ``m``'s weights; ``h0``/``c0`` (B, H)."""
    return plain_lstm(x, h0, c0, *m.parameters(), m.scheme, masks or {})


def run(model, x, h0, c0, **kw):
    out, (h, c) = model(x, (h0, c0), **kw)
    return out, h[0], c[0]


def grads_of(fn, tensors):
    """Outputs of fn and the gradients of a fixed loss of them w.r.t. ``tensors``."""
    out, h, c = fn()
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(out)).sum() \
        + (h ** 2).sum() + 3 * c.sum()
    grads = torch.autograd.grad(loss, tensors)
    return [out.detach(), h.detach(), c.detach(), *grads]


def assert_all_close(a, b, atol=1e-5, rtol=1e-5):
    assert len(a) == len(b)
    for k, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, atol=atol, rtol=rtol, msg=lambda m: f"item {k}: {m}")


# --------------------------------------------------------------------------- equals nn.LSTM


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("kind,mask,path", [
    ("variational", "tied", "auto"),  # rate 0: fused kernel
    ("semeniuta", "step", "auto"),
    ("zoneout", "step", "auto"),
    ("variational", "tied", "loop"),  # step loop, no masks
    ("variational", "tied", "ones"),  # step loop, all-keep masks
    ("variational", "untied", "ones"),
    ("semeniuta", "sequence", "ones"),
    ("semeniuta", "step", "ones"),
    ("zoneout", "step", "ones"),
])
def test_rate_zero_equals_nn_lstm(kind, mask, path, with_hx):
    """Outputs, final states and every gradient (parameters, input, hx) match nn.LSTM."""
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H)
    step = StepLSTM(I, H, kind, 0.0, mask).train()
    step.load_state_dict(lstm.state_dict())
    x, h0, c0 = inputs()
    hx = (h0, c0) if with_hx else None
    kw = {}
    if path == "loop":
        kw["masks"] = {}
    elif path == "ones":
        one = torch.ones(B, H)
        kw["masks"] = {
            "tied": dict(h=one),
            "untied": dict(h=torch.ones(4, B, H)),
            "sequence": dict(g=one),
            "step": dict(g=torch.ones(T, B, H)) if kind == "semeniuta" else
            dict(zone_h=torch.zeros(T, B, H), zone_c=torch.zeros(T, B, H)),
        }[mask]
    wrt = [x, *lstm.parameters()] + ([h0, c0] if with_hx else [])
    wrt_step = [x, *step.parameters()] + ([h0, c0] if with_hx else [])

    def call(m, wkw):
        def fn():
            out, (h, c) = m(x, hx, **wkw)
            return out, h, c
        return fn

    expected = grads_of(call(lstm, {}), wrt)
    got = grads_of(call(step, kw), wrt_step)
    assert_all_close(got, expected)


def test_parameters_and_init_match_nn_lstm():
    torch.manual_seed(3)
    lstm = nn.LSTM(I, H)
    torch.manual_seed(3)
    step = StepLSTM(I, H, "variational", 0.5, "tied")
    assert [n for n, _ in step.named_parameters()] == [n for n, _ in lstm.named_parameters()]
    for (n, p), q in zip(step.named_parameters(), lstm.parameters()):
        assert p.shape == q.shape
        assert torch.equal(p, q), n
    lstm.load_state_dict(step.state_dict())  # both directions


# --------------------------------------------------------------------------- masks


MASK_SHAPES = {  # (kind, mask) -> its masks' shapes for (T, B, H) = (T, 32, 64), as each paper defines them
    ("variational", "tied"): {"h": (32, 64)},  # per sequence, one for all gates
    ("variational", "untied"): {"h": (4, 32, 64)},  # per sequence, one per gate
    ("variational", "untied_x"): {"h": (4, 32, 64), "x": (4, 32, I)},  # + per gate on x_t
    ("semeniuta", "sequence"): {"g": (32, 64)},
    ("semeniuta", "step"): {"g": (T, 32, 64)},
    ("zoneout", "step"): {"zone_h": (T, 32, 64), "zone_c": (T, 32, 64)},
}


@pytest.mark.parametrize("kind,mask", list(MASK_SHAPES))
def test_mask_values_and_shapes(kind, mask):
    p = 0.4
    m = make(kind, mask, rate=p, cell_rate=0.25, h=64)
    masks = m.sample_masks(T, 32)
    assert {name: tuple(v.shape) for name, v in masks.items()} == MASK_SHAPES[kind, mask]
    for name, value in masks.items():
        if kind == "zoneout":  # {0, 1}, 1 = keep the previous value, no rescaling
            assert set(value.unique().tolist()) <= {0.0, 1.0}
            z = 0.4 if name == "zone_h" else 0.25
            assert abs(value.mean().item() - z) < 0.05
        else:  # inverted dropout: {0, 1/(1-p)}
            vals = value.unique()
            assert torch.allclose(vals, torch.tensor([0.0, 1 / (1 - p)])), vals
            assert abs((value == 0).float().mean().item() - p) < 0.05


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_forward_uses_sample_masks(kind, mask):
    """forward in train() draws exactly what sample_masks draws, and applies it as defined."""
    m = make(kind, mask).train()
    x, h0, c0 = inputs()
    torch.manual_seed(7)
    masks = m.sample_masks(T, B)
    torch.manual_seed(7)
    got = run(m, x, h0, c0)
    injected = run(m, x, h0, c0, masks=masks)
    ref = reference(m, x, h0[0], c0[0], masks)
    assert_all_close(got, injected, atol=0, rtol=0)
    assert_all_close(got, ref)


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_masks_resampled_each_forward(kind, mask):
    m = make(kind, mask).train()
    x, h0, c0 = inputs()
    a, b = run(m, x, h0, c0)[0], run(m, x, h0, c0)[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_masks_differ_across_the_batch(kind, mask):
    """Same sequence in every batch row: rows differ only through their own masks."""
    m = make(kind, mask).train()
    x = torch.randn(T, 1, I).expand(T, B, I).contiguous()
    out, _ = m(x)
    assert not torch.allclose(out[:, 0], out[:, 1])
    for v in m.sample_masks(T, B).values():
        assert not torch.equal(v.select(-2, 0), v.select(-2, 1))


def test_variational_mask_constant_over_time():
    """A Gal mask has no time axis: the same (B, H) mask multiplies h_{t-1} at every step,
    so a sequence whose mask keeps nothing sees no recurrence at any step."""
    m = make("variational", "tied").train()
    assert m.sample_masks(T, B)["h"].shape == (B, H)
    x, h0, c0 = inputs()
    zero = dict(h=torch.zeros(B, H))
    no_recurrence = m.state_dict()
    no_recurrence["weight_hh_l0"] = torch.zeros(4 * H, H)
    m2 = make("variational", "tied")
    m2.load_state_dict(no_recurrence)
    assert_all_close(run(m, x, h0, c0, masks=zero), run(m2, x, h0, c0, masks={}))


def test_semeniuta_step_masks_change_over_time_sequence_masks_do_not():
    step = make("semeniuta", "step").sample_masks(T, B)["g"]
    seq = make("semeniuta", "sequence").sample_masks(T, B)["g"]
    assert step.shape == (T, B, H) and not torch.equal(step[0], step[1])
    assert seq.shape == (B, H)


def test_tied_is_one_mask_for_all_gates_untied_one_per_gate():
    torch.manual_seed(0)
    tied, untied = make("variational", "tied"), make("variational", "untied")
    untied.load_state_dict(tied.state_dict())
    x, h0, c0 = inputs()
    mt = tied.sample_masks(T, B)["h"]  # (B, H)
    mu = untied.sample_masks(T, B)["h"]  # (4, B, H)
    assert mt.shape == (B, H) and mu.shape == (4, B, H)
    assert all(not torch.equal(mu[a], mu[b]) for a in range(4) for b in range(a + 1, 4))
    # untied with four copies of the tied mask is the tied LSTM
    assert_all_close(run(untied, x, h0, c0, masks=dict(h=mt.expand(4, B, H))),
                     run(tied, x, h0, c0, masks=dict(h=mt)))
    # each gate sees its own mask: the reference with per-gate masks
    assert_all_close(run(untied, x, h0, c0, masks=dict(h=mu)),
                     reference(untied, x, h0[0], c0[0], dict(h=mu)))
    # and changing the mask of one gate only changes the result
    mu2 = mu.clone()
    mu2[2] = 2.0 - mu2[2]
    assert not torch.allclose(run(untied, x, h0, c0, masks=dict(h=mu))[0],
                              run(untied, x, h0, c0, masks=dict(h=mu2))[0])


@pytest.mark.parametrize("mask", ["sequence", "step"])
def test_semeniuta_never_drops_the_previous_cell(mask):
    """c_t = f*c_{t-1} + i*d(g_t): with d dropping everything, c_t = f*c_{t-1} exactly."""
    m = make("semeniuta", mask, dtype=torch.float64)
    x, h0, c0 = inputs(torch.float64, t=1)
    shape = (B, H) if mask == "sequence" else (1, B, H)
    _, h1, c1 = run(m, x, h0, c0, masks=dict(g=torch.zeros(shape, dtype=torch.float64)))
    w_ih, w_hh, b_ih, b_hh = m.parameters()
    gates = x[0] @ w_ih.T + h0[0] @ w_hh.T + b_ih + b_hh
    f = gates[:, H:2 * H].sigmoid()
    o = gates[:, 3 * H:].sigmoid()
    torch.testing.assert_close(c1, f * c0[0])
    torch.testing.assert_close(h1, o * torch.tanh(f * c0[0]))


def test_zoneout_keep_all_freezes_the_state():
    m = make("zoneout", "step")
    x, h0, c0 = inputs()
    ones = torch.ones(T, B, H)
    out, h, c = run(m, x, h0, c0, masks=dict(zone_h=ones, zone_c=ones))
    assert torch.equal(out, h0.expand(T, B, H)) and torch.equal(c, c0[0])


# --------------------------------------------------------------------------- eval and MC


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_eval_is_deterministic_and_mask_free(kind, mask):
    m = make(kind, mask).eval()
    x, h0, c0 = inputs()
    a, b = run(m, x, h0, c0), run(m, x, h0, c0)
    assert_all_close(a, b, atol=0, rtol=0)
    if kind == "zoneout":  # eval is the expectation h_t = z*h_{t-1} + (1-z)*h~_t (same for c)
        z = dict(zone_h=torch.full((T, B, H), m.scheme.rate), zone_c=torch.full((T, B, H), m.scheme.cell_rate))
        expected = reference(m, x, h0[0], c0[0], z)
    else:
        expected = reference(m, x, h0[0], c0[0], m.expected_masks(T, B))
    assert_all_close(a, expected)


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_mc_keeps_masks_on_in_eval(kind, mask):
    m = make(kind, mask).eval()
    x, h0, c0 = inputs()
    m.mc = True
    torch.manual_seed(5)
    mc_out = run(m, x, h0, c0)
    assert not torch.allclose(mc_out[0], run(m, x, h0, c0)[0])  # resampled
    m.train()
    m.mc = False
    torch.manual_seed(5)
    assert_all_close(mc_out, run(m, x, h0, c0), atol=0, rtol=0)  # the training distribution
    m.eval()
    assert not torch.allclose(mc_out[0], run(m, x, h0, c0)[0])


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_state_dict_round_trips_across_train_eval(kind, mask):
    m = make(kind, mask)
    x, h0, c0 = inputs()
    m.eval()
    before = run(m, x, h0, c0)
    sd = m.state_dict()
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    m.train()
    run(m, x, h0, c0)
    m.eval()
    other = make(kind, mask, seed=99).train()
    other.load_state_dict(sd)
    other.eval()
    assert_all_close(run(other, x, h0, c0), before, atol=0, rtol=0)
    assert_all_close(run(m, x, h0, c0), before, atol=0, rtol=0)


def test_masks_follow_dtype_and_default_state_is_zeros():
    m = make("variational", "untied", dtype=torch.float64)
    assert m.sample_masks(T, B)["h"].dtype == torch.float64
    x, _, _ = inputs(torch.float64)
    masks = m.sample_masks(T, B)
    zeros = torch.zeros(1, B, H, dtype=torch.float64)
    assert_all_close(run(m, x, zeros, zeros, masks=masks)[:1], [m(x, masks=masks)[0]], 0, 0)


@pytest.mark.parametrize("kind,mask,rate,cell_rate", [
    ("variational", "step", 0.5, 0.0),
    ("variational", "sequence", 0.5, 0.0),
    ("semeniuta", "tied", 0.5, 0.0),
    ("zoneout", "sequence", 0.5, 0.0),
    ("zoneout", "tied", 0.5, 0.0),
    ("weight_drop", "element", 0.5, 0.0),
    ("gal", "tied", 0.5, 0.0),
    ("variational", "diagonal", 0.5, 0.0),
    ("variational", "tied", 1.0, 0.0),
    ("variational", "tied", -0.1, 0.0),
    ("variational", "tied", 0.5, 0.2),  # cell_rate is zoneout's
    ("zoneout", "step", 0.5, 1.0),
])
def test_invalid_configurations_raise(kind, mask, rate, cell_rate):
    with pytest.raises(ValueError):
        StepLSTM(I, H, kind, rate, mask, cell_rate=cell_rate)


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("kind,mask,mode", [(k, m, "train") for k, m in FUSABLE]
                         + [("zoneout", "step", "eval"), ("variational", "tied", "no masks")])
def test_hand_written_backward_gradcheck(kind, mask, mode):
    m = make(kind, mask, dtype=torch.float64, i=3, h=4)
    masks = {"train": m.sample_masks, "eval": m.expected_masks, "no masks": lambda T, B: {}}[mode](3, 2)
    x, h0, c0 = inputs(torch.float64, t=3, b=2, i=3, h=4)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, h0, c0, *w):
        return fused_lstm(x, h0, c0, *w, masks)

    assert torch.autograd.gradcheck(f, (x, h0[0], c0[0], *params))


@pytest.mark.parametrize("kind,mask", VARIANTS)
def test_float32_loop_gradients_match_the_float64_reference(kind, mask):
    """The fast fp32 path (oneDNN GEMMs on CPU) against autograd through the reference."""
    m = make(kind, mask, h=48, i=24)
    x, h0, c0 = inputs(t=9, b=5, i=24, h=48)
    masks = m.sample_masks(9, 5)
    got = grads_of(lambda: run(m, x, h0, c0, masks=masks), [x, h0, c0, *m.parameters()])
    m64 = make(kind, mask, h=48, i=24, dtype=torch.float64)
    m64.load_state_dict(m.state_dict())
    d = [t.detach().double().requires_grad_() for t in (x, h0, c0)]
    masks64 = {k: v.double() for k, v in masks.items()}
    want = grads_of(lambda: reference(m64, d[0], d[1][0], d[2][0], masks64),
                    [*d, *m64.parameters()])
    assert_all_close(got, [w.float() for w in want], atol=1e-4, rtol=1e-4)


def test_bias_gradients_are_separate_tensors():
    """b_ih and b_hh get equal gradients, but never the same tensor (clipping in place
    would otherwise scale it twice)."""
    m = make("variational", "tied").train()
    x, h0, c0 = inputs()
    run(m, x, h0, c0)[0].sum().backward()
    assert torch.equal(m.bias_ih_l0.grad, m.bias_hh_l0.grad)
    assert m.bias_ih_l0.grad.data_ptr() != m.bias_hh_l0.grad.data_ptr()


@pytest.mark.parametrize("kind,mask", FUSABLE)
def test_fused_loop_equals_the_plain_path_values_and_gradients(kind, mask):
    """The hand-written loop is an optimisation of plain_lstm: a module with fused=False
    gives the same outputs and the same gradients for every parameter and input."""
    fused = make(kind, mask, dtype=torch.float64).train()
    plain = make(kind, mask, dtype=torch.float64).train()
    plain.fused = False
    plain.load_state_dict(fused.state_dict())
    x, h0, c0 = inputs(torch.float64)
    masks = fused.sample_masks(T, B)
    got = grads_of(lambda: run(fused, x, h0, c0, masks=masks), [x, h0, c0, *fused.parameters()])
    want = grads_of(lambda: run(plain, x, h0, c0, masks=masks), [x, h0, c0, *plain.parameters()])
    assert_all_close(got, want, atol=1e-10, rtol=1e-10)
