"""Optimisers: SGD, and the switch to averaged SGD of NT-ASGD (Merity et al. 2017).

ASGD is ``torch.optim.ASGD(lr, t0=0, lambd=0)`` as in awd-lstm-lm: plain SGD steps
plus a running average ``ax`` of the iterates, used for validation, checkpoints and
test once the switch has happened.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def make_sgd(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_asgd(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.ASGD(model.parameters(), lr=lr, t0=0, lambd=0.0, weight_decay=weight_decay)


@torch.no_grad()
def shrink_weights(model: nn.Module, shrink: float) -> None:
    """``w *= 1 - shrink`` for every parameter, after the optimiser step.

    The weight decay of Gal's LM code (``paramx:add(-weight_decay, paramx)`` after the
    SGD update): a fixed fraction per step, unlike an L2 term that the lr scales.
    """
    for p in model.parameters():
        p.mul_(1.0 - shrink)


def is_asgd(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.ASGD)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextmanager
def averaged_weights(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Temporarily load ASGD's averaged iterate ``ax`` into ``model`` (no-op for SGD)."""
    if not is_asgd(optimizer):
        yield
        return
    saved = {}
    with torch.no_grad():
        for p in model.parameters():
            state = optimizer.state.get(p)
            if state and "ax" in state:
                saved[p] = p.detach().clone()
                p.copy_(state["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved.items():
                p.copy_(value)
