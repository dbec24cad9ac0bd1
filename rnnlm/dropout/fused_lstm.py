"""The fused step loop: an LSTM sequence with per-sample recurrent masks in one autograd node.

:func:`fused_lstm` computes what :func:`~rnnlm.dropout.step_lstm.plain_lstm` computes for the
masks it knows (the fields of :class:`FusedMasks`), with a hand-written backward. A step
scheme opts into it by setting ``fusable = True`` when its masks are a subset of these
fields with the same meaning; the tests check every such scheme against the plain path,
values and gradients.

Forward: one GEMM for the input projection of all T steps (per-gate input masks: one per
gate block), then per step one GEMM (h_{t-1}*m) @ W_hh^T (per-gate masks: four (H, H)
blocks) plus pointwise ops writing the gate activations into a preallocated (T, B, 4H)
buffer. Backward: the mirror loop (one GEMM dgates_t @ W_hh per step) with the activation
derivatives computed for all steps at once, then the weight gradients as single GEMMs over
the stacked (T*B, .) tensors (dW_hh = dgates^T @ (h_{t-1}*m), the sum over t done by the GEMM).

Precision: the GEMMs run in the weights' dtype; the cell state, the gate activations and
the backward recurrence (dh, dc, dgates) run in fp32 whenever that dtype is bf16 or fp16,
as cuDNN's LSTM keeps its state and accumulation in fp32 under autocast. Rounding c_t to
bf16 at every one of 70 steps would otherwise compound through the forward and the
backward alike. The layer's output ``out`` has the weights' dtype; ``h_n`` and ``c_n``,
carried to the next segment, stay fp32.

Two implementations of the pointwise work of a step share the loop structure:

- eager (default): in-place PyTorch ops writing into the preallocated buffers. The
  per-step GEMMs are skinny (B rows); on CPU fp32 they go through oneDNN with the
  recurrent weight prepacked once per forward/backward, the way oneDNN's RNN primitive
  makes ``nn.LSTM`` fast on CPU; elsewhere (CUDA, float64, bf16, builds without oneDNN)
  plain ``torch.mm``: :mod:`rnnlm.dropout.mkldnn_linear` chooses.
- compiled (``compiled=True``, ``trainer.compile``): :func:`cell_forward` and
  :func:`cell_backward`, the pointwise work of one step as pure functions, under
  ``torch.compile``. Their shapes are (B, 4H) whatever the segment length T, so variable
  BPTT compiles nothing new, and each step is one (4H)-wide GEMM (Gal untied: one batched
  GEMM over the four gate blocks) plus one generated kernel, instead of a dozen small
  kernels: what a launch-bound GPU loop wants. The GEMMs stay outside the compiled code
  (cuBLAS / oneDNN).

Speed relative to ``nn.LSTM``: ``scripts/bench_step_lstm.py``, figures in ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Mapping, NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .mkldnn_linear import linear, prepacked_linear

LOW_PRECISION = (torch.bfloat16, torch.float16)


class FusedMasks(NamedTuple):
    """The masks the fused loop applies; a field is None when that dropout is off.

    Dropout masks hold {0, 1/(1-p)}; zoneout masks hold {0, 1} (1 = keep the previous
    value), or the constant z in eval (the expectation).
    """

    h: Optional[Tensor] = None  # on h_{t-1}: (B, H) one for all gates | (4, B, H) one per gate
    g: Optional[Tensor] = None  # on the cell update g_t: (B, H) per sequence | (T, B, H) per step
    zone_h: Optional[Tensor] = None  # zoneout of h: (T, B, H)
    zone_c: Optional[Tensor] = None  # zoneout of c: (T, B, H)
    x: Optional[Tensor] = None  # one per gate on the input x_t: (4, B, I)


def fused_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
               b_hh: Tensor, masks: Mapping[str, Tensor], compiled: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``x (T, B, I)``, ``h0``/``c0`` ``(B, H)``, masks named as the fields of :class:`FusedMasks`
    -> ``out (T, B, H)``, ``h_n``, ``c_n``. Gates i, f, g, o as in PyTorch. ``compiled``: the
    pointwise work of each step under ``torch.compile`` (see the module docstring).

    Under ``torch.autocast`` the GEMM operands (x, the weights, the biases) are cast to the
    autocast dtype first (the casts are differentiable, so fp32 weights get fp32 gradients);
    the loop runs with autocast off, its state and recurrence in fp32."""
    kind = x.device.type
    operands = (x, w_ih, w_hh, b_ih, b_hh)
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        operands = tuple(t.to(dtype) for t in operands)
    x, w_ih, w_hh, b_ih, b_hh = operands
    with torch.autocast(kind, enabled=False):
        return _StepLSTMFunction.apply(compiled, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *FusedMasks(**masks))


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the loop's state and recurrence for GEMMs in ``dtype``: fp32 for bf16/fp16."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


@contextlib.contextmanager
def _unfilled_buffers() -> Iterator[None]:
    """Allocations without the NaN fill of deterministic mode
    (``torch.utils.deterministic.fill_uninitialized_memory``): the loop writes every
    element of every buffer it allocates before reading it."""
    flag = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = flag


# ------------------------------------------------------------- one step, as pure functions


def recurrent_input(r: Tensor, mask_h: Optional[Tensor], keep: Optional[Tensor] = None) -> Tensor:
    """The recurrent term of dh_{t-1} from the GEMM's output ``r``: ``r (B, H)`` [* mask_h],
    or for per-gate masks ``r (4, B, H)``, one block per gate, summed under their masks;
    plus zoneout's kept share ``keep (B, H)``."""
    if mask_h is not None:
        r = r * mask_h
        if r.dim() == 3:
            r = r.sum(0)
    return r if keep is None else r + keep


def cell_forward(xw: Tensor, r: Tensor, c_prev: Tensor, h_prev: Tensor, mask_h: Optional[Tensor],
                 mask_g: Optional[Tensor], zone_h: Optional[Tensor], zone_c: Optional[Tensor],
                 gemm_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One LSTM step after its GEMMs. ``xw (B, 4H)`` the input projection with both biases,
    ``r`` the recurrent GEMM's output: ``(B, 4H)``, or ``(4, B, H)`` one block per gate;
    ``c_prev``, ``h_prev (B, H)``; masks of this step (B, H) or None.
    -> ``act (B, 4H)`` (i, f, g, o after their nonlinearities), ``c_t``, ``tanh(c~_t)``,
    ``h_t (B, H)``, and ``h_t`` under ``mask_h`` in ``gemm_dtype``, the next step's GEMM input
    (``(4, B, H)`` for per-gate masks)."""
    B, H = h_prev.shape
    if r.dim() == 3:
        r = r.transpose(0, 1).reshape(B, 4 * H)
    i, f, g, o = (xw.to(c_prev.dtype) + r.to(c_prev.dtype)).chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    act = torch.cat([i, f, g, o], 1)
    c_tilde = f * c_prev + i * (g if mask_g is None else g * mask_g)
    tc = c_tilde.tanh()
    h = o * tc
    if zone_h is not None:  # h_t = z*h_{t-1} + (1-z)*h~_t
        h = torch.lerp(h, h_prev, zone_h)
    c = c_tilde if zone_c is None else torch.lerp(c_tilde, c_prev, zone_c)
    hm = h if mask_h is None else h * mask_h
    return act, c, tc, h, hm.to(gemm_dtype)


def cell_backward(r: Tensor, mask_h: Optional[Tensor], keep: Optional[Tensor], dc: Tensor, dy: Tensor,
                  act: Tensor, c_prev: Tensor, tc: Tensor, mask_g: Optional[Tensor], zone_h: Optional[Tensor],
                  zone_c: Optional[Tensor], gemm_dtype: torch.dtype, per_gate: bool
                  ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """One step of the backward recurrence after its GEMM. ``r``, ``mask_h``, ``keep`` give
    dh_t without dy (:func:`recurrent_input`), ``dc (B, H)`` the gradient reaching c_t,
    ``dy (B, H)`` the output's; ``act``, ``c_prev`` (c_{t-1}), ``tc`` as the forward saved them.
    -> ``dgates (B, 4H)`` w.r.t. the pre-activations, the same in ``gemm_dtype`` as the
    next GEMM's input (``(4, B, H)`` if ``per_gate``), ``dc_{t-1}``, and zoneout's kept share
    of dh_{t-1} (or None)."""
    H = tc.shape[1]
    dh = recurrent_input(r, mask_h, keep) + dy
    keep_h = None
    if zone_h is not None:
        keep_h = dh * zone_h
        dh = dh - keep_h
    dc_keep = None
    if zone_c is not None:
        dc_keep = dc * zone_c
        dc = dc - dc_keep
    i, f, g, o = act.chunk(4, 1)
    dc = dc + dh * o * (1 - tc * tc)
    gd, id_ = (g, i) if mask_g is None else (g * mask_g, i * mask_g)
    dgates = torch.cat([dc * gd * (i - i * i), dc * c_prev * (f - f * f),
                        dc * id_ * (1 - g * g), dh * tc * (o - o * o)], 1)
    dc = dc * f if dc_keep is None else dc * f + dc_keep
    low = dgates.to(gemm_dtype)
    if per_gate:
        low = low.view(-1, 4, H).transpose(0, 1).contiguous()
    return dgates, low, dc, keep_h


@functools.cache
def compiled_cell() -> tuple[Callable, Callable]:
    """:func:`cell_forward` and :func:`cell_backward` under ``torch.compile`` (one graph each,
    static shapes: one compile per batch size, mask pattern and dtype)."""
    compile_ = functools.partial(torch.compile, dynamic=False, fullgraph=True)
    return compile_(cell_forward), compile_(cell_backward)


# Compiled specialisations of a step before Dynamo falls back to eager: mask patterns
# (train, eval, MC) x batch sizes (train, eval, test) x dtypes x the first backward step.
RECOMPILE_LIMIT = 64


# --------------------------------------------------------------------------- the loop


class _StepLSTMFunction(torch.autograd.Function):
    """The whole sequence in one autograd node, with a hand-written backward.

    Shapes: x (T, B, I), h0/c0 (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,),
    masks as in :class:`FusedMasks`. Returns out (T, B, H), h_n (B, H), c_n (B, H).
    Gate order i, f, g, o as in PyTorch. x and the weights share the GEMM dtype; h0, c0
    and the masks are in the state dtype (:func:`state_dtype`) or are cast to it.
    """

    @staticmethod
    def forward(ctx, compiled, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask_h, mask_g, zone_h, zone_c, mask_x):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        lp, sd = w_hh.dtype, state_dtype(w_hh.dtype)
        ctx.state_dtypes = (h0.dtype, c0.dtype)
        mask_h, mask_g, zone_h, zone_c = (None if m is None else m.to(sd) for m in (mask_h, mask_g, zone_h, zone_c))
        h0s = h0.to(sd)
        with _unfilled_buffers():
            # Input projection of all steps at once, both biases folded in.
            bias = b_ih + b_hh
            if mask_x is None:
                xw = linear(x.reshape(T * B, -1), w_ih, bias).view(T, B, 4 * H)  # (T, B, 4H)
            else:  # each gate block sees x_t under its own (B, I) mask, constant over time
                mask_x = mask_x.to(lp)
                xw = x.new_empty(T * B, 4 * H)
                for k in range(4):
                    blk = slice(k * H, (k + 1) * H)
                    xw[:, blk] = linear((x * mask_x[k]).reshape(T * B, -1), w_ih[blk], bias[blk])
                xw = xw.view(T, B, 4 * H)
            loop = _compiled_forward if compiled else _eager_forward
            A, C, TC, Y = loop(xw, h0s, c0.to(sd), w_hh, mask_h, mask_g, zone_h, zone_c)
        ctx.compiled = compiled
        ctx.save_for_backward(x, h0s, w_ih, w_hh, mask_h, mask_g, zone_h, zone_c, mask_x, A, C, TC, Y)
        return Y.to(lp), Y[-1].to(h0.dtype, copy=True), C[-1].to(c0.dtype, copy=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_n, dc_n):
        with torch.autocast(dY.device.type, enabled=False), _unfilled_buffers():
            return (None, *_StepLSTMFunction._backward(ctx, dY, dh_n, dc_n))

    @staticmethod
    def _backward(ctx, dY, dh_n, dc_n):
        x, h0, w_ih, w_hh, mask_h, mask_g, zone_h, zone_c, mask_x, A, C, TC, Y = ctx.saved_tensors
        T, B, H = Y.shape
        lp, sd = w_hh.dtype, A.dtype
        loop = _compiled_backward if ctx.compiled else _eager_backward
        dA, dh, dc = loop(dY.to(sd), dh_n.to(sd), dc_n.to(sd), w_hh, mask_h, mask_g, zone_h, zone_c, A, C, TC)

        dA2 = dA.view(T * B, 4 * H).to(lp)
        dx = dw_ih = dw_hh = db = None
        x2 = x.reshape(T * B, -1)
        if mask_x is None:
            if ctx.needs_input_grad[1]:
                dx = torch.mm(dA2, w_ih).view_as(x)
            if ctx.needs_input_grad[4]:
                dw_ih = torch.mm(dA2.t(), x2)
        else:  # gate k: dx += (dA_k W_ih_k) * m_k, dW_ih_k = dA_k^T (x * m_k)
            if ctx.needs_input_grad[1]:
                dx = torch.zeros_like(x)
            if ctx.needs_input_grad[4]:
                dw_ih = torch.empty_like(w_ih)
            for k in range(4):
                blk = slice(k * H, (k + 1) * H)
                if dx is not None:
                    dx.addcmul_(torch.mm(dA2[:, blk], w_ih[blk]).view_as(x), mask_x[k])
                if dw_ih is not None:
                    torch.mm(dA2[:, blk].t(), (x * mask_x[k]).reshape(T * B, -1), out=dw_ih[blk])
        if ctx.needs_input_grad[5]:
            # dW_hh = sum_t dgates_t^T (h_{t-1}*m): one GEMM over the stacked (T*B, .) tensors.
            h_prev = torch.cat([h0.unsqueeze(0), Y[:-1]])  # h_{t-1}, (T, B, H)
            if mask_h is not None and mask_h.dim() == 3:
                dw_hh = w_hh.new_empty(4 * H, H)  # per gate block; MKL is as fast as oneDNN here
                for k in range(4):
                    hm = (h_prev * mask_h[k]).to(lp).view(T * B, H)
                    torch.mm(dA2[:, k * H:(k + 1) * H].t(), hm, out=dw_hh[k * H:(k + 1) * H])
            else:
                hm = h_prev if mask_h is None else h_prev * mask_h
                dw_hh = linear(dA2.t(), hm.to(lp).view(T * B, H).t())  # (4H, H)
        if ctx.needs_input_grad[6] or ctx.needs_input_grad[7]:
            db = dA.view(T * B, 4 * H).sum(0).to(lp)  # summed in the state dtype
        db2 = None if db is None else db.clone()  # two parameters must not share a grad tensor
        h_dtype, c_dtype = ctx.state_dtypes
        return dx, dh.to(h_dtype), dc.to(c_dtype), dw_ih, dw_hh, db, db2, None, None, None, None, None


def _step_mask(mask: Optional[Tensor], t: int) -> Optional[Tensor]:
    """Step ``t``'s slice of a per-step ``(T, B, H)`` mask; a ``(B, H)`` mask as it is."""
    return mask[t] if mask is not None and mask.dim() == 3 else mask


def _eager_forward(xw, h0, c0, w_hh, mask_h, mask_g, zone_h, zone_c):
    """The forward loop in place: -> A (T, B, 4H), C (T+1, B, H) with C[t] = c_{t-1},
    TC (T, B, H) = tanh(c~_t), Y (T, B, H) = h_t, all in the state dtype of h0."""
    T, B, H4 = xw.shape
    H = H4 // 4
    lp, sd = w_hh.dtype, h0.dtype
    untied = mask_h is not None and mask_h.dim() == 3
    if untied:  # one (H, H) block of W_hh per gate, each on its own masked h_{t-1}
        rec = [prepacked_linear(w_hh[k * H:(k + 1) * H], B) for k in range(4)]
    else:
        rec = prepacked_linear(w_hh, B)
    A = xw.new_empty(T, B, 4 * H, dtype=sd)  # gate activations i, f, g, o
    C = xw.new_empty(T + 1, B, H, dtype=sd)  # C[t] = c_{t-1}; C[0] = c0
    TC = xw.new_empty(T, B, H, dtype=sd)  # tanh(c~_t), c~_t the cell before zoneout
    Y = xw.new_empty(T, B, H, dtype=sd)  # h_t
    C[0] = c0
    h = h0
    for t in range(T):
        a = A[t]  # (B, 4H)
        if untied:
            hm = (h * mask_h).to(lp)  # (4, B, H): h_{t-1} under each gate's mask
            for k in range(4):
                blk = slice(k * H, (k + 1) * H)
                torch.add(xw[t, :, blk], rec[k](hm[k]), out=a[:, blk])
        else:
            torch.add(xw[t], rec((h if mask_h is None else h * mask_h).to(lp)), out=a)
        a[:, :2 * H].sigmoid_()
        a[:, 2 * H:3 * H].tanh_()
        a[:, 3 * H:].sigmoid_()
        i, f, g, o = a.chunk(4, 1)  # (B, H) each
        mg = _step_mask(mask_g, t)
        if mg is not None:
            g = g * mg
        c_prev = C[t]
        c_new = C[t + 1] if zone_c is None else torch.empty_like(c_prev)
        torch.mul(f, c_prev, out=c_new).addcmul_(i, g)
        tc = torch.tanh(c_new, out=TC[t])
        if zone_h is None:
            torch.mul(o, tc, out=Y[t])
        else:  # h_t = z*h_{t-1} + (1-z)*h~_t
            torch.lerp(o * tc, h, zone_h[t], out=Y[t])
        if zone_c is not None:
            torch.lerp(c_new, c_prev, zone_c[t], out=C[t + 1])
        h = Y[t]
    return A, C, TC, Y


def _eager_backward(dY, dh_n, dc_n, w_hh, mask_h, mask_g, zone_h, zone_c, A, C, TC):
    """The backward recurrence in place: -> dA (T, B, 4H) w.r.t. the gate pre-activations,
    dh_0, dc_0 (B, H), in the state dtype."""
    T, B, H4 = A.shape
    H = H4 // 4
    lp = w_hh.dtype
    untied = mask_h is not None and mask_h.dim() == 3
    I_, F_, G_, O_ = A.chunk(4, 2)  # (T, B, H) each
    # Local derivatives of the activations, all steps at once: s' = s(1-s), tanh' = 1-g^2.
    D = A - A * A  # (T, B, 4H)
    torch.mul(G_, G_, out=D[:, :, 2 * H:3 * H]).neg_().add_(1.0)
    K = O_ * (1.0 - TC * TC)  # d h~_t / d c~_t
    Gd, Id = G_, I_  # what dc multiplies to give di and dg, (T, B, H)
    if mask_g is not None:
        Gd, Id = G_ * mask_g, I_ * mask_g
    if untied:
        rec = [prepacked_linear(w_hh[k * H:(k + 1) * H].t(), B) for k in range(4)]
    else:
        rec = prepacked_linear(w_hh.t(), B)

    dA = torch.empty_like(A)  # d loss / d gate pre-activations, (T, B, 4H)
    dh = dh_n.clone()  # (B, H)
    dc = dc_n.clone()
    for t in range(T - 1, -1, -1):
        dh += dY[t]
        if zone_h is not None:
            dh_keep = dh * zone_h[t]
            dh = dh - dh_keep
        if zone_c is not None:
            dc_keep = dc * zone_c[t]
            dc = dc - dc_keep
        dc.addcmul_(dh, K[t])
        da = dA[t]  # (B, 4H)
        torch.mul(dc, Gd[t], out=da[:, :H])
        torch.mul(dc, C[t], out=da[:, H:2 * H])
        torch.mul(dc, Id[t], out=da[:, 2 * H:3 * H])
        torch.mul(dh, TC[t], out=da[:, 3 * H:])
        da.mul_(D[t])
        dc = dc * F_[t]
        if zone_c is not None:
            dc += dc_keep
        if untied:
            da4 = da.view(B, 4, H).transpose(0, 1).to(lp).contiguous()  # (4, B, H)
            dh = rec[0](da4[0]).to(dh.dtype).mul_(mask_h[0])
            for k in range(1, 4):
                dh.addcmul_(rec[k](da4[k]), mask_h[k])
        else:
            dh = rec(da.to(lp)).to(dh.dtype)
            if mask_h is not None:
                dh.mul_(mask_h)
        if zone_h is not None:
            dh += dh_keep
    return dA, dh, dc


def _compiled_forward(xw, h0, c0, w_hh, mask_h, mask_g, zone_h, zone_c):
    """:func:`_eager_forward` with each step's pointwise work one compiled
    :func:`cell_forward`; per step one GEMM (per-gate masks: one batched GEMM)."""
    T, B, H4 = xw.shape
    H = H4 // 4
    lp = w_hh.dtype
    forward, _ = compiled_cell()
    if mask_h is not None and mask_h.dim() == 3:
        w4t = w_hh.view(4, H, H).transpose(1, 2)  # (4, H, H): W_k^T per gate
        gemm = lambda hm: torch.bmm(hm, w4t)  # noqa: E731  (4, B, H)
    else:
        gemm = prepacked_linear(w_hh, B)  # (B, 4H)
    acts, cells, tanhs, hs = [], [c0], [], []
    c, h = c0, h0
    hm = (h0 if mask_h is None else h0 * mask_h).to(lp)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for t in range(T):
            act, c, tc, h, hm = forward(xw[t], gemm(hm), c, h, mask_h, _step_mask(mask_g, t),
                                        _step_mask(zone_h, t), _step_mask(zone_c, t), lp)
            acts.append(act), cells.append(c), tanhs.append(tc), hs.append(h)
    return torch.stack(acts), torch.stack(cells), torch.stack(tanhs), torch.stack(hs)


def _compiled_backward(dY, dh_n, dc_n, w_hh, mask_h, mask_g, zone_h, zone_c, A, C, TC):
    """:func:`_eager_backward` with each step's pointwise work one compiled
    :func:`cell_backward`; per step one GEMM (per-gate masks: one batched GEMM)."""
    T, B, H4 = A.shape
    H = H4 // 4
    lp = w_hh.dtype
    _, backward = compiled_cell()
    per_gate = mask_h is not None and mask_h.dim() == 3
    if per_gate:
        w4 = w_hh.view(4, H, H)
        gemm = lambda d4: torch.bmm(d4, w4)  # noqa: E731  (4, B, H): dgates_k @ W_k
    else:
        gemm = prepacked_linear(w_hh.t(), B)  # (B, H)
    dgates = [None] * T
    r, m, keep, dc = dh_n, None, None, dc_n  # dh_T = dh_n, no mask yet
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for t in range(T - 1, -1, -1):
            dgates[t], low, dc, keep = backward(r, m, keep, dc, dY[t], A[t], C[t], TC[t], _step_mask(mask_g, t),
                                                _step_mask(zone_h, t), _step_mask(zone_c, t), lp, per_gate)
            r, m = gemm(low), mask_h
    return torch.stack(dgates), recurrent_input(r.to(dc.dtype), m, keep), dc
