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

The per-step GEMMs are skinny (B rows). On CPU fp32 they go through oneDNN with the
recurrent weight prepacked once per forward/backward, the way oneDNN's RNN primitive makes
``nn.LSTM`` fast on CPU; elsewhere (CUDA, float64, builds without oneDNN) plain
``torch.mm``: :mod:`rnnlm.dropout.mkldnn_linear` chooses. Speed relative to ``nn.LSTM``:
``scripts/bench_step_lstm.py``, figures in ``docs/performance.md``.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .mkldnn_linear import linear, prepacked_linear


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
               b_hh: Tensor, masks: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``x (T, B, I)``, ``h0``/``c0`` ``(B, H)``, masks named as the fields of :class:`FusedMasks`
    -> ``out (T, B, H)``, ``h_n``, ``c_n``. Gates i, f, g, o as in PyTorch.

    Under ``torch.autocast`` every operand is cast to the autocast dtype first (the casts are
    differentiable, so fp32 weights get fp32 gradients) and the loop runs in that dtype with
    autocast off, as cuDNN's LSTM does under autocast."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, *FusedMasks(**masks))
    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        return _StepLSTMFunction.apply(*tensors)
    dtype = torch.get_autocast_dtype(kind)
    with torch.autocast(kind, enabled=False):
        return _StepLSTMFunction.apply(*(None if t is None else t.to(dtype) for t in tensors))


# --------------------------------------------------------------------------- the loop


class _StepLSTMFunction(torch.autograd.Function):
    """The whole sequence in one autograd node, with a hand-written backward.

    Shapes: x (T, B, I), h0/c0 (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,),
    masks as in :class:`FusedMasks`. Returns out (T, B, H), h_n (B, H), c_n (B, H).
    Gate order i, f, g, o as in PyTorch.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask_h, mask_g, zone_h, zone_c, mask_x):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        untied = mask_h is not None and mask_h.dim() == 3
        # Input projection of all steps at once, both biases folded in.
        bias = b_ih + b_hh
        if mask_x is None:
            xw = linear(x.reshape(T * B, -1), w_ih, bias).view(T, B, 4 * H)  # (T, B, 4H)
        else:  # each gate block sees x_t under its own (B, I) mask, constant over time
            xw = x.new_empty(T * B, 4 * H)
            for k in range(4):
                blk = slice(k * H, (k + 1) * H)
                xw[:, blk] = linear((x * mask_x[k]).reshape(T * B, -1), w_ih[blk], bias[blk])
            xw = xw.view(T, B, 4 * H)
        if untied:  # one (H, H) block of W_hh per gate, each on its own masked h_{t-1}
            rec = [prepacked_linear(w_hh[k * H:(k + 1) * H], B) for k in range(4)]
        else:
            rec = prepacked_linear(w_hh, B)

        A = x.new_empty(T, B, 4 * H)  # gate activations i, f, g, o
        C = x.new_empty(T + 1, B, H)  # C[t] = c_{t-1}; C[0] = c0
        TC = x.new_empty(T, B, H)  # tanh(c~_t), c~_t the cell before zoneout
        Y = x.new_empty(T, B, H)  # h_t
        C[0] = c0
        h = h0
        for t in range(T):
            a = A[t]  # (B, 4H)
            if untied:
                hm = h * mask_h  # (4, B, H): h_{t-1} under each gate's mask
                for k in range(4):
                    blk = slice(k * H, (k + 1) * H)
                    torch.add(xw[t, :, blk], rec[k](hm[k]), out=a[:, blk])
            else:
                torch.add(xw[t], rec(h if mask_h is None else h * mask_h), out=a)
            a[:, :2 * H].sigmoid_()
            a[:, 2 * H:3 * H].tanh_()
            a[:, 3 * H:].sigmoid_()
            i, f, g, o = a.chunk(4, 1)  # (B, H) each
            if mask_g is not None:
                g = g * (mask_g[t] if mask_g.dim() == 3 else mask_g)
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
        ctx.save_for_backward(x, h0, w_ih, w_hh, mask_h, mask_g, zone_h, zone_c, mask_x, A, C, TC, Y)
        return Y, Y[-1].clone(), C[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_n, dc_n):
        with torch.autocast(dY.device.type, enabled=False):  # in the forward's dtype
            return _StepLSTMFunction._backward(ctx, dY, dh_n, dc_n)

    @staticmethod
    def _backward(ctx, dY, dh_n, dc_n):
        x, h0, w_ih, w_hh, mask_h, mask_g, zone_h, zone_c, mask_x, A, C, TC, Y = ctx.saved_tensors
        T, B, H = Y.shape
        untied = mask_h is not None and mask_h.dim() == 3
        I_, F_, G_, O_ = A.chunk(4, 2)  # (T, B, H) each
        # Local derivatives of the activations, all steps at once: s' = s(1-s), tanh' = 1-g^2.
        D = A - A * A  # (T, B, 4H)
        torch.mul(G_, G_, out=D[:, :, 2 * H:3 * H]).neg_().add_(1.0)
        K = O_ * (1.0 - TC * TC)  # d h~_t / d c~_t
        Gd, Id = G_, I_  # what dc multiplies to give di and dg
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
            torch.mul(dc, Gd[t] if Gd.dim() == 3 else Gd, out=da[:, :H])
            torch.mul(dc, C[t], out=da[:, H:2 * H])
            torch.mul(dc, Id[t] if Id.dim() == 3 else Id, out=da[:, 2 * H:3 * H])
            torch.mul(dh, TC[t], out=da[:, 3 * H:])
            da.mul_(D[t])
            dc = dc * F_[t]
            if zone_c is not None:
                dc += dc_keep
            if untied:
                da4 = da.view(B, 4, H).transpose(0, 1).contiguous()  # (4, B, H)
                dh = rec[0](da4[0]).mul_(mask_h[0])
                for k in range(1, 4):
                    dh.addcmul_(rec[k](da4[k]), mask_h[k])
            else:
                dh = rec(da)
                if mask_h is not None:
                    dh.mul_(mask_h)
            if zone_h is not None:
                dh += dh_keep

        dA2 = dA.view(T * B, 4 * H)
        dx = dw_ih = dw_hh = db = None
        x2 = x.reshape(T * B, -1)
        if mask_x is None:
            if ctx.needs_input_grad[0]:
                dx = torch.mm(dA2, w_ih).view_as(x)
            if ctx.needs_input_grad[3]:
                dw_ih = torch.mm(dA2.t(), x2)
        else:  # gate k: dx += (dA_k W_ih_k) * m_k, dW_ih_k = dA_k^T (x * m_k)
            if ctx.needs_input_grad[0]:
                dx = torch.zeros_like(x)
            if ctx.needs_input_grad[3]:
                dw_ih = torch.empty_like(w_ih)
            for k in range(4):
                blk = slice(k * H, (k + 1) * H)
                if dx is not None:
                    dx.addcmul_(torch.mm(dA2[:, blk], w_ih[blk]).view_as(x), mask_x[k])
                if dw_ih is not None:
                    torch.mm(dA2[:, blk].t(), (x * mask_x[k]).reshape(T * B, -1), out=dw_ih[blk])
        if ctx.needs_input_grad[4]:
            # dW_hh = sum_t dgates_t^T (h_{t-1}*m): one GEMM over the stacked (T*B, .) tensors.
            h_prev = torch.cat([h0.unsqueeze(0), Y[:-1]])  # h_{t-1}, (T, B, H)
            if untied:  # per gate block; at (H, T*B) x (T*B, H) MKL is as fast as oneDNN
                dw_hh = w_hh.new_empty(4 * H, H)
                for k in range(4):
                    hm = (h_prev * mask_h[k]).view(T * B, H)
                    torch.mm(dA2[:, k * H:(k + 1) * H].t(), hm, out=dw_hh[k * H:(k + 1) * H])
            else:
                hm = h_prev if mask_h is None else h_prev * mask_h
                dw_hh = linear(dA2.t(), hm.view(T * B, H).t())  # (4H, H)
        if ctx.needs_input_grad[5] or ctx.needs_input_grad[6]:
            db = dA2.sum(0)
        db2 = None if db is None else db.clone()  # two parameters must not share a grad tensor
        return dx, dh, dc, dw_ih, dw_hh, db, db2, None, None, None, None, None
