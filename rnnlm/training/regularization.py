"""Activation regularisation (AR) and temporal activation regularisation (TAR),
Merity et al. 2017b (arXiv 1708.01009), as used by AWD-LSTM.

* AR  = alpha * mean(m * h_t)^2 over the *dropped* last-layer output ``(T, B, H)``;
* TAR = beta * mean((h_t - h_{t-1})^2) over the *undropped* last-layer output.
"""

from __future__ import annotations

import torch


def activation_regularization(dropped_output: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * mean(x^2)`` of the dropped last-layer output ``(T, B, H)``."""
    if alpha == 0:
        return dropped_output.new_zeros(())
    return alpha * dropped_output.pow(2).mean()


def temporal_activation_regularization(raw_output: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * mean((h_t - h_{t-1})^2)`` of the undropped last-layer output ``(T, B, H)``."""
    if beta == 0 or raw_output.size(0) < 2:
        return raw_output.new_zeros(())
    return beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean()
