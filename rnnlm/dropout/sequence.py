"""Dropout on the non-recurrent sites of an RNN LM: embedding output (AWD ``dropouti``),
between layers (``dropouth``) and the last layer's output (``dropout``).

Two mask regimes, chosen by ``locked``:

* locked / variational (Gal & Ghahramani 2016; AWD ``LockedDropout``): one mask of
  shape (1, B, H) per forward, shared by every time step of a sequence and
  different across the batch;
* standard (Zaremba et al. 2014, arXiv 1409.2329): a fresh (T, B, H) mask.

Inputs are time-major ``(T, B, H)``; kept units are scaled by 1/(1-p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import StochasticModule


class SequenceDropout(StochasticModule):
    """Dropout on ``x (T, B, H)``: locked (mask (1, B, H)) or per time step (mask (T, B, H))."""

    def __init__(self, p: float, locked: bool = True) -> None:
        super().__init__()
        self.p = p
        self.locked = locked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stochastic or self.p == 0:
            return x
        if not self.locked:
            if self.generator is None:
                return F.dropout(x, self.p, training=True)
            return x * self.dropout_mask(x.shape, self.p, x)  # (T, B, H)
        mask = self.held_mask("mask", lambda: self.dropout_mask((1, x.size(1), x.size(2)), self.p, x))  # (1, B, H)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, locked={self.locked}"
