"""StepLSTM: a one-layer LSTM whose recurrent dropout acts on per-sample states.

Three recurrent dropouts cannot be written as a change of ``W_hh`` and so cannot
use the fused LSTM kernel; they need a loop over time steps:

* ``variational`` -- Gal & Ghahramani 2016 (arXiv 1512.05287): a dropout mask on
  h_{t-1} before the recurrent matmul, sampled once per sequence (constant over
  time, different per batch element). ``tied``: one (B, H) mask for the four
  gates (Keras implementation 2); ``untied``: one per gate, (4, B, H) (Keras
  implementations 0/1, Gal's LM code). Gal's LM code also gives each gate its own
  (B, I) mask on the layer input x_t (``input_rate``).
* ``semeniuta`` -- Semeniuta et al. 2016 (arXiv 1603.05118): dropout on the cell
  update only, c_t = f*c_{t-1} + i*d(g_t); the mask is per ``sequence`` or per
  ``step``; c_{t-1} itself is never dropped.
* ``zoneout`` -- Krueger et al. 2016 (arXiv 1606.01305): each unit keeps its
  previous value with probability z (h: ``rate``, c: ``cell_rate``), a fresh
  {0, 1} mask per step, no rescaling; eval uses the expectation
  h_t = z*h_{t-1} + (1-z)*h~_t (same for c).

Dropout masks take values in {0, 1/(1-p)} (inverted dropout). They are on in
``train()`` and, with ``mc=True`` (MC-dropout evaluation), in ``eval()``. Without
a mask (kind ``none``, rate 0, or eval of variational/Semeniuta) the layer calls
the fused ATen/cuDNN kernel, exactly as ``nn.LSTM`` does.

The loop
--------
:class:`_StepLSTMFunction` runs the whole sequence in one autograd node with a
hand-written backward. Forward: one GEMM for the input projection of all T steps
(untied input masks: one per gate block), then per step one GEMM (h_{t-1}*m) @ W_hh^T
(untied: four (H, H) blocks) plus pointwise ops writing the gate activations into a
preallocated (T, B, 4H) buffer. Backward: the mirror loop (one GEMM dgates_t @ W_hh per
step) with the activation derivatives computed for all steps at once, then the weight
gradients as single GEMMs over the stacked (T*B, .) tensors (dW_hh = dgates^T @
(h_{t-1}*m), the sum over t done by the GEMM).

The per-step GEMMs are skinny (B rows). On CPU fp32 they go through oneDNN with the
recurrent weight prepacked once per forward/backward
(``torch.ops.mkldnn._reorder_linear_weight`` then ``_linear_pointwise``), the way
oneDNN's RNN primitive makes ``nn.LSTM`` fast on CPU; elsewhere (CUDA, float64, builds
without oneDNN) plain ``torch.mm``. oneDNN given an operand that is neither row- nor
column-major falls back to a slow reference kernel, hence :func:`_dense`. Speed
relative to ``nn.LSTM``: ``scripts/bench_step_lstm.py``, figures in
``docs/performance.md``.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..config import VALID_MASKS, MaskKind, RecurrentKind
from .base import StochasticModule, bernoulli_mask

State = tuple[Tensor, Tensor]  # (h, c), each (1, B, H)

STEP_KINDS = (RecurrentKind.none, RecurrentKind.variational, RecurrentKind.semeniuta,
              RecurrentKind.zoneout)


class StepMasks(NamedTuple):
    """The masks of one forward; a field is None when that dropout is off.

    Dropout masks hold {0, 1/(1-p)}; zoneout masks hold {0, 1} (1 = keep the
    previous value), or the constant z in eval (the expectation).
    """

    h: Optional[Tensor] = None  # variational, on h_{t-1}: (B, H) tied | (4, B, H) untied
    g: Optional[Tensor] = None  # semeniuta, on g_t: (B, H) per sequence | (T, B, H) per step
    zone_h: Optional[Tensor] = None  # zoneout of h: (T, B, H)
    zone_c: Optional[Tensor] = None  # zoneout of c: (T, B, H)
    x: Optional[Tensor] = None  # variational untied, a mask per gate on x_t: (4, B, I)


# --------------------------------------------------------------------------- GEMMs


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether this build has oneDNN's prepacked linear (x86/ARM CPU builds of torch >= 2.0)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values: drawing from the global RNG here would shift every later mask
        w = torch.arange(32.0).view(8, 4) / 32
        x = torch.arange(12.0).view(3, 4) / 12
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(y, x @ w.t(), atol=1e-5))
    except (RuntimeError, AttributeError):
        return False


def _use_onednn(w: Tensor) -> bool:
    return (w.device.type == "cpu" and w.dtype == torch.float32
            and torch.backends.mkldnn.enabled and _onednn_linear_available())


def _dense(t: Tensor) -> Tensor:
    """A 2-D operand oneDNN multiplies fast: row- or column-major. Other strides (e.g. a column
    block of a wider matrix) fall onto a reference kernel that is ~500x slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _prepacked(w: Tensor, batch: int) -> Callable[[Tensor], Tensor]:
    """``x -> x @ w.T`` for many calls on ``(batch, K)`` inputs; ``w (N, K)`` is prepared once."""
    if _use_onednn(w):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch)
        return lambda x: torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), packed, None, "none", [], "")
    wt = w.t()
    return lambda x: torch.mm(x, wt)


def _mm_nt(a: Tensor, b: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``a @ b.T (+ bias)`` for the large once-per-sequence GEMMs (oneDNN on CPU fp32)."""
    if _use_onednn(b):
        return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b), bias, "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


# --------------------------------------------------------------------------- the loop


class _StepLSTMFunction(torch.autograd.Function):
    """The whole sequence in one autograd node, with a hand-written backward.

    Shapes: x (T, B, I), h0/c0 (B, H), w_ih (4H, I), w_hh (4H, H), biases (4H,),
    masks as in :class:`StepMasks`. Returns out (T, B, H), h_n (B, H), c_n (B, H).
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
            xw = _mm_nt(x.reshape(T * B, -1), w_ih, bias).view(T, B, 4 * H)  # (T, B, 4H)
        else:  # each gate block sees x_t under its own (B, I) mask, constant over time
            xw = x.new_empty(T * B, 4 * H)
            for k in range(4):
                blk = slice(k * H, (k + 1) * H)
                xw[:, blk] = _mm_nt((x * mask_x[k]).reshape(T * B, -1), w_ih[blk], bias[blk])
            xw = xw.view(T, B, 4 * H)
        if untied:  # one (H, H) block of W_hh per gate, each on its own masked h_{t-1}
            rec = [_prepacked(w_hh[k * H:(k + 1) * H], B) for k in range(4)]
        else:
            rec = _prepacked(w_hh, B)

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
            rec = [_prepacked(w_hh[k * H:(k + 1) * H].t(), B) for k in range(4)]
        else:
            rec = _prepacked(w_hh.t(), B)

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
                dw_hh = _mm_nt(dA2.t(), hm.view(T * B, H).t())  # (4H, H)
        if ctx.needs_input_grad[5] or ctx.needs_input_grad[6]:
            db = dA2.sum(0)
        db2 = None if db is None else db.clone()  # two parameters must not share a grad tensor
        return dx, dh, dc, dw_ih, dw_hh, db, db2, None, None, None, None, None


# --------------------------------------------------------------------------- the plain path


def plain_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
               b_hh: Tensor, masks: StepMasks) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM and its recurrent dropouts as the papers define them, one gate at a time, in
    plain PyTorch (autograd does the backward). ``x (T, B, I)``, ``h0``/``c0`` ``(B, H)``
    -> ``out (T, B, H)``, ``h_n``, ``c_n``. Gates i, f, g, o as in PyTorch.

    This is the definition a recurrent scheme is written against: a new scheme adds its
    masks to :class:`StepMasks`, draws them in :meth:`StepLSTM.sample_masks` and applies
    them here. :class:`_StepLSTMFunction` is the same computation with a hand-written
    backward, an optimisation a scheme opts into once it is tested equal to this path.
    """
    H = w_hh.shape[1]
    W, U, b = w_ih.split(H), w_hh.split(H), (b_ih + b_hh).split(H)
    mh, mg, zh, zc, mx = masks.h, masks.g, masks.zone_h, masks.zone_c, masks.x
    rec = [1.0] * 4 if mh is None else [mh] * 4 if mh.dim() == 2 else list(mh)  # Gal tied / untied
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        xs = [x[t]] * 4 if mx is None else [x[t] * mx[k] for k in range(4)]  # Gal: per-gate input
        pre = [xs[k] @ W[k].T + (h * rec[k]) @ U[k].T + b[k] for k in range(4)]
        i, f, g, o = pre[0].sigmoid(), pre[1].sigmoid(), pre[2].tanh(), pre[3].sigmoid()
        if mg is not None:  # Semeniuta: drop the cell update only, never c_{t-1}
            g = g * (mg[t] if mg.dim() == 3 else mg)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        h = h_new if zh is None else zh[t] * h + (1 - zh[t]) * h_new  # zoneout: 1 = keep
        c = c_new if zc is None else zc[t] * c + (1 - zc[t]) * c_new
        outs.append(h)
    return torch.stack(outs), h, c


# --------------------------------------------------------------------------- the module


class StepLSTM(nn.LSTM, StochasticModule):
    """One-layer LSTM ``(T, B, I) -> (T, B, H)`` with per-sample recurrent dropout.

    ``kind``/``mask``: ``none`` (plain LSTM), ``variational`` + ``tied``/``untied``,
    ``semeniuta`` + ``sequence``/``step``, ``zoneout`` + ``step``. ``rate`` is the
    drop probability p (zoneout: z_h), ``cell_rate`` zoneout's z_c. ``input_rate``
    (variational untied only) gives each gate its own (B, I) mask on x_t, as Gal's LM
    code does with its per-gate ``noise_i``.

    It *is* a one-layer ``nn.LSTM`` (``weight_ih_l0 (4H, I)``, ``weight_hh_l0 (4H, H)``,
    ``bias_ih_l0``, ``bias_hh_l0 (4H,)``, gates i, f, g, o, the same init), so state
    dicts load both ways and the mask-free path is ``nn.LSTM.forward`` itself, which
    keeps cuDNN's flattened weights on CUDA. ``forward`` has the ``nn.LSTM``
    API; passing ``masks`` (e.g. from :meth:`sample_masks`) always runs the step
    loop with exactly those masks, whatever the mode. ``fused=False`` runs
    :func:`plain_lstm` instead of the hand-written loop (same values and gradients).
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str, rate: float, mask: str,
                 cell_rate: float = 0.0, input_rate: float = 0.0, fused: bool = True) -> None:
        kind_, mask_ = RecurrentKind(kind), MaskKind(mask)  # ValueError on unknown names
        if kind_ not in STEP_KINDS:
            raise ValueError(f"StepLSTM kind must be one of {[k.value for k in STEP_KINDS]}, "
                             f"got {kind!r} (weight_drop uses WeightDropLSTM)")
        if mask_ not in VALID_MASKS[kind_]:
            raise ValueError(f"mask {mask!r} does not go with kind {kind!r}; choose one of "
                             f"{[m.value for m in VALID_MASKS[kind_]]}")
        for name, value in (("rate", rate), ("cell_rate", cell_rate), ("input_rate", input_rate)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1)")
        if cell_rate and kind_ is not RecurrentKind.zoneout:
            raise ValueError("cell_rate only applies to kind='zoneout'")
        if input_rate and (kind_, mask_) != (RecurrentKind.variational, MaskKind.untied):
            raise ValueError("input_rate (per-gate input masks) only applies to variational untied")
        super().__init__(input_size, hidden_size)
        self.kind = kind_.value
        self.mask = mask_.value
        self.rate = float(rate)
        self.cell_rate = float(cell_rate)
        self.input_rate = float(input_rate)
        self.fused = fused  # the hand-written loop; False: plain_lstm through autograd

    @property
    def _weights(self) -> list[Tensor]:
        return [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]

    def _active(self) -> bool:
        return self.kind != "none" and (self.rate > 0 or self.cell_rate > 0 or self.input_rate > 0)

    def sample_masks(self, T: int, B: int) -> StepMasks:
        """Training masks for a ``(T, B)`` batch, as ``forward`` draws them: masks that are
        constant over time are held for a whole MC pass (see ``StochasticModule``)."""
        w, H, I, p = self.weight_hh_l0, self.hidden_size, self.input_size, self.rate
        if self.kind == "variational":
            return StepMasks(
                h=self.held_mask("h", lambda: bernoulli_mask(
                    (B, H) if self.mask == "tied" else (4, B, H), p, w)) if p > 0 else None,
                x=self.held_mask("x", lambda: bernoulli_mask((4, B, I), self.input_rate, w))
                if self.input_rate > 0 else None,
            )
        if self.kind == "semeniuta" and p > 0:
            if self.mask == "sequence":
                return StepMasks(g=self.held_mask("g", lambda: bernoulli_mask((B, H), p, w)))
            return StepMasks(g=bernoulli_mask((T, B, H), p, w))
        if self.kind == "zoneout":
            return StepMasks(
                zone_h=w.new_empty(T, B, H).bernoulli_(p) if p > 0 else None,
                zone_c=w.new_empty(T, B, H).bernoulli_(self.cell_rate) if self.cell_rate > 0 else None,
            )
        return StepMasks()

    def expected_masks(self, T: int, B: int) -> StepMasks:
        """Zoneout's eval-time masks: the constant z (its expectation), as (T, B, H) views."""
        w, H = self.weight_hh_l0, self.hidden_size
        if self.kind != "zoneout":
            return StepMasks()

        def const(z: float) -> Optional[Tensor]:
            return w.new_full((1, 1, H), z).expand(T, B, H) if z > 0 else None

        return StepMasks(zone_h=const(self.rate), zone_c=const(self.cell_rate))

    def forward(self, x: Tensor, hx: Optional[State] = None,
                masks: Optional[StepMasks] = None) -> tuple[Tensor, State]:
        """``x (T, B, I)``, ``hx`` = (h0, c0) each (1, B, H) or None (zeros)
        -> ``(out (T, B, H), (h_n (1, B, H), c_n (1, B, H)))``."""
        T, B, _ = x.shape
        if hx is None:
            zeros = x.new_zeros(1, B, self.hidden_size)
            hx = (zeros, zeros)
        if masks is None and self._active():
            if self.stochastic:
                masks = self.sample_masks(T, B)
            elif self.kind == "zoneout":
                masks = self.expected_masks(T, B)
        if masks is None:  # nothing to drop: nn.LSTM's fused kernel
            return super().forward(x, hx)
        if self.fused:
            out, h_n, c_n = _StepLSTMFunction.apply(x, hx[0][0], hx[1][0], *self._weights, *masks)
        else:
            out, h_n, c_n = plain_lstm(x, hx[0][0], hx[1][0], *self._weights, masks)
        return out, (h_n.unsqueeze(0), c_n.unsqueeze(0))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, kind={self.kind}, mask={self.mask}, rate={self.rate}"
        if self.input_rate:
            s += f", input_rate={self.input_rate}"
        return s + (f", cell_rate={self.cell_rate}" if self.kind == "zoneout" else "")
