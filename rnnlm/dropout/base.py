"""What every dropout module in rnnlm shares: when its masks are on.

Masks are sampled in training mode, and also in eval mode while Monte-Carlo
dropout evaluation (Gal & Ghahramani 2016, arXiv 1506.02142) sets ``mc``.
"""

from __future__ import annotations

import torch
from torch import nn


class StochasticModule(nn.Module):
    """A module whose randomness is on in ``train()`` and, with ``mc=True``, in ``eval()``."""

    mc: bool = False

    @property
    def stochastic(self) -> bool:
        return self.training or self.mc


def set_mc_dropout(model: nn.Module, on: bool) -> None:
    """Switch Monte-Carlo dropout on or off for every stochastic submodule of ``model``."""
    for module in model.modules():
        if hasattr(module, "mc"):
            module.mc = on


def bernoulli_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout mask of ``shape``: 0 with probability p, else 1/(1-p).

    Drawn as ``U >= p`` with U ~ U[0, 1), i.e. Bernoulli(1 - p): on CPU this is ~4x
    faster than ``Tensor.bernoulli_`` (16 vs 63 ms for a 4600 x 1150 W_hh mask),
    which is what keeps WeightDrop's cost small.
    """
    return torch.rand(shape, dtype=like.dtype, device=like.device).ge_(p).div_(1.0 - p)
