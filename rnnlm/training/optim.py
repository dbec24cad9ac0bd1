"""Optimisers: SGD, and the switch to averaged SGD of NT-ASGD (Merity et al. 2017).

ASGD is ``torch.optim.ASGD(lr, t0=0, lambd=0)`` as in awd-lstm-lm: plain SGD steps
plus a running average ``ax`` of the iterates, used for validation, checkpoints and
test once the switch has happened. :class:`AveragedSGD` does its update with ``_foreach``
ops on state that stays on the parameters' device, so a step never waits for the device.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def make_sgd(model: nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """SGD; ``fused``: torch's fused kernel, which takes a gradient scaler's ``grad_scale`` and
    ``found_inf`` on the device (a skipped fp16 step costs no host sync)."""
    return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused or None)


class AveragedSGD(torch.optim.ASGD):
    """``torch.optim.ASGD`` (Polyak & Juditsky 1992; its hyperparameters and state keys ``step``,
    ``eta``, ``mu``, ``ax``) without host syncs: the maths of torch's ``capturable=True``
    path, on every device. torch's default path reads ``step`` and ``mu`` with ``.item()``
    (about 14 syncs per step for the AWD model on CUDA); its capturable path refuses CPU
    tensors. Per parameter tensor p with gradient g, learning rate lr::

        step += 1
        p    -= eta * (g + weight_decay * p + lambd * p)
        ax   += mu * (p - ax)
        mu    = 1 / max(1, step - t0)
        eta   = lr / (1 + lambd * lr * step) ** alpha

    ``eta`` is updated after the step, so a step uses the lr of the step before (as
    torch's ASGD, and so awd-lstm-lm). State dicts load both ways with ``torch.optim.ASGD``.

    Under a ``torch.amp.GradScaler`` it takes the scaler's ``grad_scale`` and ``found_inf``
    tensors as torch's fused optimisers do (``_step_supports_amp_scaling``): gradients are
    divided by ``grad_scale`` if the scaler has not unscaled them, and a step with ``found_inf``
    changes nothing (parameters, ``ax``, ``step``, ``mu``, ``eta``), decided on the device.
    """

    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, axs, mus, etas, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ASGD does not support sparse gradients")
                state = self.state[p]
                if not state:
                    scalar = dict(device=p.device, dtype=torch.get_default_dtype())
                    state["step"] = torch.zeros((), **scalar)
                    state["eta"] = torch.full((), float(group["lr"]), **scalar)  # a fill: no copy
                    state["mu"] = torch.ones((), **scalar)
                    state["ax"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                for key in ("step", "eta", "mu"):  # torch's default path keeps step on the CPU
                    if state[key].device != p.device:
                        state[key] = state[key].to(p.device)
                params.append(p)
                grads.append(-p.grad if group["maximize"] else p.grad)
                axs.append(state["ax"])
                mus.append(state["mu"])
                etas.append(state["eta"])
                steps.append(state["step"])
            if not params:
                continue
            lr, lambd, alpha, t0 = float(group["lr"]), group["lambd"], group["alpha"], group["t0"]
            grads, etas_now, mus_now, count = self._scaled(grads, etas, mus)
            torch._foreach_add_(steps, count)
            update = torch._foreach_add(grads, params, alpha=group["weight_decay"] + lambd)
            torch._foreach_addcmul_(params, update, etas_now, value=-1)
            torch._foreach_addcmul_(axs, torch._foreach_sub(params, axs), mus_now)
            new_mus = torch._foreach_sub(steps, t0)
            torch._foreach_maximum_(new_mus, 1.0)
            torch._foreach_reciprocal_(new_mus)
            torch._foreach_copy_(mus, new_mus)
            new_etas = torch._foreach_mul(steps, lambd * lr)
            torch._foreach_add_(new_etas, 1)
            torch._foreach_pow_(new_etas, alpha)
            torch._foreach_reciprocal_(new_etas)
            torch._foreach_mul_(new_etas, lr)
            torch._foreach_copy_(etas, new_etas)
        return loss


    def _scaled(self, grads, etas, mus):
        """The gradients, step sizes and averaging weights of this step, and what ``step`` grows
        by: as given, or under a gradient scaler, unscaled and zero where ``found_inf`` is set."""
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if grad_scale is not None:
            grads = torch._foreach_div(grads, grad_scale.to(grads[0].device))
        if found_inf is None:
            return grads, etas, mus, 1
        skip = found_inf.to(grads[0].device) > 0
        keep = (~skip).to(etas[0].dtype)
        grads = [torch.where(skip, 0.0, g) for g in grads]  # inf * 0 would be NaN
        return grads, torch._foreach_mul(etas, keep), torch._foreach_mul(mus, keep), keep


def make_asgd(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return AveragedSGD(model.parameters(), lr=lr, t0=0, lambd=0.0, weight_decay=weight_decay)


@torch.no_grad()
def shrink_weights(model: nn.Module, shrink: float, stepped: torch.Tensor | None = None) -> None:
    """``w *= 1 - shrink`` for every parameter, after the optimiser step.

    The weight decay of Gal's LM code (``paramx:add(-weight_decay, paramx)`` after the
    SGD update): a fixed fraction per step, unlike an L2 term that the lr scales.
    ``stepped``: a 0-d bool tensor, False where a gradient scaler skipped the step (then
    nothing shrinks, decided on the device).
    """
    params = list(model.parameters())
    if stepped is None:
        torch._foreach_mul_(params, 1.0 - shrink)
    else:
        torch._foreach_mul_(params, 1.0 - shrink * stepped.to(params[0].dtype))


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
