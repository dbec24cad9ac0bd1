"""WeightDrop: DropConnect on the recurrent weight W_hh (Wan et al. 2013; Merity et al.
2017, arXiv 1708.02182, Sec. 2), keeping the fused LSTM kernel (cuDNN / ATen).

``W_hh`` has shape (4H, H): four gate blocks (i, f, g, o) of (H, H); column j is
everything unit j of h_{t-1} sends back. One mask is drawn per forward
(minibatch) and applied to the weight, never to activations:

=============  ===========  =====================================================
mask           shape        meaning
=============  ===========  =====================================================
element        (4H, H)      AWD default: each recurrent connection independently
row            (4H, 1)      AWD ``variational=True``: a gate row of one unit
                            loses all its recurrent input
column         (1, H)       unit j's recurrent output is cut from all gates
                            (= Gal's tied mask on h_{t-1}, but per minibatch)
gate_column    (4, 1, H)    a column mask per gate block (= Gal untied, per
                            minibatch)
=============  ===========  =====================================================

The raw weight stays an ordinary ``nn.LSTM`` Parameter; each forward computes the
dropped weight and calls the LSTM through ``torch.func.functional_call`` (no
``del _parameters`` monkey-patch, no ``parametrize``), so the gradient reaches
the raw weight. All masks, row included, are off in ``eval()`` (awd-lstm-lm's
``WeightDrop(variational=True)`` keeps its row masks on at test time).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ...precision import lstm_kernel
from ..base import StochasticModule
from ..scheme import RecurrentScheme

# Each mask as a shape that broadcasts against W_hh viewed as (4, H, H): gate, row, column.
MASK_SHAPES = {
    "element": lambda H: (4, H, H),
    "row": lambda H: (4, H, 1),
    "column": lambda H: (1, 1, H),
    "gate_column": lambda H: (4, 1, H),
}


class WeightDrop(RecurrentScheme):
    name = "weight_drop"
    masks = tuple(MASK_SHAPES)

    @classmethod
    def build(cls, input_size: int, hidden_size: int, rate: float, mask: str, cell_rate: float = 0.0,
              input_rate: float = 0.0) -> "WeightDropLSTM":
        return WeightDropLSTM(input_size, hidden_size, rate, mask)


class WeightDropLSTM(StochasticModule):
    """A one-layer LSTM ``(T, B, I) -> (T, B, H)`` with DropConnect on ``weight_hh_l0``."""

    def __init__(self, input_size: int, hidden_size: int, p: float, mask: str = "element") -> None:
        WeightDrop.validate(p, mask)
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.p = p
        self.mask = mask

    def sample_mask(self) -> torch.Tensor:
        """A mask that broadcasts against W_hh viewed as (4, H, H); values in {0, 1/(1-p)}."""
        shape = MASK_SHAPES[self.mask](self.lstm.hidden_size)
        return self.dropout_mask(shape, self.p, self.lstm.weight_hh_l0)

    def dropped_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """W_hh * mask as a (4H, H) tensor, differentiable w.r.t. the raw weight."""
        w = self.lstm.weight_hh_l0
        H = self.lstm.hidden_size
        return (w.view(4, H, H) * mask).view(4 * H, H)

    def forward(self, x: torch.Tensor, hx=None, mask: torch.Tensor | None = None):
        """``x (T, B, I)``, ``hx`` = (h0, c0) each (1, B, H) -> (out (T, B, H), (h_n, c_n))."""
        if mask is None:
            if not self.stochastic or self.p == 0:
                return lstm_kernel(self.lstm, x, hx)
            mask = self.held_mask("mask", self.sample_mask)
        weight = self.dropped_weight(mask)
        return lstm_kernel(lambda x, hx: functional_call(self.lstm, {"weight_hh_l0": weight}, (x, hx)), x, hx)

    def extra_repr(self) -> str:
        return f"p={self.p}, mask={self.mask}"
