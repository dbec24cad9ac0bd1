"""StepLSTM: a one-layer LSTM whose recurrent dropout acts on per-sample states.

Some recurrent dropouts cannot be written as a change of ``W_hh`` and so cannot use the
fused LSTM kernel: Gal & Ghahramani's per-sequence masks on h_{t-1}, Semeniuta et al.'s
dropout of the cell update, Krueger et al.'s zoneout (modules in
:mod:`rnnlm.dropout.schemes`). Each is a :class:`StepScheme`: it draws its masks and says
where they act in one LSTM step, through four hooks of :func:`plain_lstm`::

    x_t^k   = gate_inputs(x_t)[k]          k = i, f, g, o
    h^k     = gate_states(h_{t-1})[k]
    a^k     = x_t^k W_k^T + h^k U_k^T + b_k
    i, f, g, o = sigmoid(a^i), sigmoid(a^f), tanh(a^g), sigmoid(a^o)
    c~_t    = f * c_{t-1} + i * cell_update(g)
    h~_t    = o * tanh(c~_t)
    h_t, c_t = next_state(h_{t-1}, c_{t-1}, h~_t, c~_t)

:func:`plain_lstm` is that step in plain PyTorch, differentiated by autograd: the
definition every scheme is tested against. A scheme whose masks are fields of
:class:`~rnnlm.dropout.fused_lstm.FusedMasks` sets ``fusable = True`` and runs the
hand-written loop of :mod:`rnnlm.dropout.fused_lstm` instead (same values and gradients).

Dropout masks take values in {0, 1/(1-p)} (inverted dropout). They are on in ``train()``
and, with ``mc=True`` (MC-dropout evaluation), in ``eval()``. Without masks the layer calls
the fused ATen/cuDNN kernel, exactly as ``nn.LSTM`` does.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn

from .cpu_kernels import lstm_kernel
from .base import StochasticModule
from .fused_lstm import fused_lstm
from .scheme import RecurrentScheme, get_scheme

State = tuple[Tensor, Tensor]  # (h, c), each (1, B, H)
Masks = dict[str, Tensor]  # a scheme's masks by name, e.g. {"h": (B, H)}


class StepScheme(RecurrentScheme):
    """A recurrent dropout whose masks act on per-sample states inside StepLSTM's loop.

    An instance holds the layer's settings: ``rate`` (drop probability; zoneout: z_h),
    ``mask``, ``cell_rate`` (zoneout's z_c) and ``input_rate`` (per-gate input masks).
    Subclasses draw masks in :meth:`sample` and apply them in the hooks, whose defaults
    leave the LSTM step unchanged.
    """

    step_loop = True
    # The masks of sample()/expected() are FusedMasks fields with their meaning: the
    # hand-written loop of fused_lstm may run this scheme.
    fusable: ClassVar[bool] = False

    def __init__(self, rate: float, mask: str, cell_rate: float = 0.0, input_rate: float = 0.0) -> None:
        self.validate(rate, mask, cell_rate, per_gate_input=input_rate > 0)
        self.rate, self.mask = float(rate), mask
        self.cell_rate, self.input_rate = float(cell_rate), float(input_rate)

    @classmethod
    def build(cls, input_size: int, hidden_size: int, rate: float, mask: str, cell_rate: float = 0.0,
              input_rate: float = 0.0) -> "StepLSTM":
        return StepLSTM(input_size, hidden_size, cls.name, rate, mask, cell_rate, input_rate)

    def active(self) -> bool:
        """Whether any mask is drawn; if not, the layer is an ``nn.LSTM``."""
        return self.rate > 0 or self.cell_rate > 0 or self.input_rate > 0

    def sample(self, layer: "StepLSTM", T: int, B: int) -> Masks:
        """The masks of one stochastic forward over a ``(T, B)`` batch. Masks constant over
        time are drawn through ``layer.held_mask`` so an MC pass holds them across segments."""
        raise NotImplementedError

    def expected(self, layer: "StepLSTM", T: int, B: int) -> Optional[Masks]:
        """Deterministic (eval) masks; None: no masks, the plain LSTM (dropout's expectation)."""
        return None

    # Hooks of one step (see the module docstring); t indexes per-step masks.
    def gate_inputs(self, x: Tensor, masks: Masks, t: int) -> Sequence[Tensor]:
        """``x_t (B, I)`` -> the input of each gate i, f, g, o."""
        return (x,) * 4

    def gate_states(self, h: Tensor, masks: Masks, t: int) -> Sequence[Tensor]:
        """``h_{t-1} (B, H)`` -> the recurrent input of each gate i, f, g, o."""
        return (h,) * 4

    def cell_update(self, g: Tensor, masks: Masks, t: int) -> Tensor:
        """The candidate ``g_t (B, H)`` as it enters c~_t = f * c_{t-1} + i * g."""
        return g

    def next_state(self, h_prev: Tensor, c_prev: Tensor, h_new: Tensor, c_new: Tensor,
                   masks: Masks, t: int) -> State:
        """``(h_t, c_t)`` from the previous state and the LSTM's new one, each (B, H)."""
        return h_new, c_new

    def __repr__(self) -> str:
        s = f"{self.name}, mask={self.mask}, rate={self.rate}"
        if self.cell_rate:
            s += f", cell_rate={self.cell_rate}"
        return s + (f", input_rate={self.input_rate}" if self.input_rate else "")


def plain_lstm(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
               b_hh: Tensor, step: StepScheme, masks: Masks) -> tuple[Tensor, Tensor, Tensor]:
    """The LSTM with ``step``'s dropout as its paper defines it, one gate at a time, in plain
    PyTorch (autograd does the backward). ``x (T, B, I)``, ``h0``/``c0`` ``(B, H)``
    -> ``out (T, B, H)``, ``h_n``, ``c_n``. Gates i, f, g, o as in PyTorch."""
    H = w_hh.shape[1]
    W, U, b = w_ih.split(H), w_hh.split(H), (b_ih + b_hh).split(H)
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        xs, hs = step.gate_inputs(x[t], masks, t), step.gate_states(h, masks, t)
        pre = [xs[k] @ W[k].T + hs[k] @ U[k].T + b[k] for k in range(4)]
        i, f, g, o = pre[0].sigmoid(), pre[1].sigmoid(), pre[2].tanh(), pre[3].sigmoid()
        c_new = f * c + i * step.cell_update(g, masks, t)
        h, c = step.next_state(h, c, o * torch.tanh(c_new), c_new, masks, t)
        outs.append(h)
    return torch.stack(outs), h, c


class StepLSTM(nn.LSTM, StochasticModule):
    """One-layer LSTM ``(T, B, I) -> (T, B, H)`` with the per-sample recurrent dropout ``kind``
    (a registered :class:`StepScheme`: variational, semeniuta, zoneout, ...), built with
    ``rate``, ``mask``, ``cell_rate`` and ``input_rate`` as that scheme defines them.

    It *is* a one-layer ``nn.LSTM`` (``weight_ih_l0 (4H, I)``, ``weight_hh_l0 (4H, H)``,
    ``bias_ih_l0``, ``bias_hh_l0 (4H,)``, gates i, f, g, o, the same init), so state dicts
    load both ways and the mask-free path is ``nn.LSTM.forward`` itself, which keeps cuDNN's
    flattened weights on CUDA. ``forward`` has the ``nn.LSTM`` API; passing ``masks`` (e.g.
    from :meth:`sample_masks`) always runs the step loop with exactly those masks, whatever
    the mode. ``fused=False`` runs :func:`plain_lstm` even for a fusable scheme;
    ``compiled=True`` runs the fused loop's per-step kernels under ``torch.compile``
    (``trainer.compile``; :mod:`rnnlm.dropout.fused_lstm`).
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str, rate: float, mask: str,
                 cell_rate: float = 0.0, input_rate: float = 0.0, fused: bool = True) -> None:
        cls = get_scheme(kind)
        if not issubclass(cls, StepScheme):
            raise ValueError(f"dropout.recurrent.kind={kind} is not a step-loop scheme; "
                             f"build its layer with rnnlm.dropout.recurrent_layer")
        step = cls(rate, mask, cell_rate, input_rate)  # validates the settings
        super().__init__(input_size, hidden_size)
        self.scheme: StepScheme = step
        self.fused = fused
        self.compiled = False

    @property
    def _weights(self) -> list[Tensor]:
        return [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]

    def sample_masks(self, T: int, B: int) -> Masks:
        """The masks ``forward`` draws in train() (and under MC dropout) for a ``(T, B)`` batch."""
        return self.scheme.sample(self, T, B)

    def expected_masks(self, T: int, B: int) -> Optional[Masks]:
        """The masks ``forward`` uses in eval(); None: the mask-free LSTM."""
        return self.scheme.expected(self, T, B)

    def forward(self, x: Tensor, hx: Optional[State] = None,
                masks: Optional[Masks] = None) -> tuple[Tensor, State]:
        """``x (T, B, I)``, ``hx`` = (h0, c0) each (1, B, H) or None (zeros)
        -> ``(out (T, B, H), (h_n (1, B, H), c_n (1, B, H)))``."""
        T, B, _ = x.shape
        if hx is None:
            zeros = x.new_zeros(1, B, self.hidden_size)
            hx = (zeros, zeros)
        if masks is None and self.scheme.active():
            masks = self.sample_masks(T, B) if self.stochastic else self.expected_masks(T, B)
        if masks is None:  # nothing to drop: nn.LSTM's fused kernel
            return lstm_kernel(super().forward, x, hx)
        if self.fused and self.scheme.fusable:
            out, h_n, c_n = fused_lstm(x, hx[0][0], hx[1][0], *self._weights, masks, compiled=self.compiled)
        else:
            out, h_n, c_n = plain_lstm(x, hx[0][0], hx[1][0], *self._weights, self.scheme, masks)
        return out, (h_n.unsqueeze(0), c_n.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, {self.scheme!r}"
