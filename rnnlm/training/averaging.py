"""Averaged weights, kept beside the weights the optimiser trains.

At a constant learning rate SGD's iterate wanders around a minimum, so a validation of the
current weights (a snapshot) jitters from epoch to epoch; an average of the iterates sits
nearer the centre and changes slowly. Two averages over the iterates w_1, w_2, ... of the
steps since the first step of epoch ``trainer.average_from``:

* uniform (Polyak & Juditsky 1992; Ruppert 1988): ``w_avg = (1/n) sum_{k<=n} w_k``,
  updated as ``w_avg += (w_n - w_avg) / n``, the average of torch's ASGD with ``t0=0``;
* ema: ``w_avg = d * w_avg + (1 - d) * w_n`` with ``d = trainer.ema_decay``, starting from
  the first iterate, an average over about 1 / (1 - d) recent steps.

Unlike NT-ASGD (Merity et al. 2017), where a non-monotone trigger decides when averaging
starts and the averaged optimiser takes over, the average here starts at an epoch the
run names and never changes the training trajectory: the optimiser steps the raw weights,
the average only reads them. Every parameter is averaged (weights and biases); the state
lives on the parameters' device and a step's update is two ``_foreach`` ops, with no sync.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ..config import Average


class WeightAverage:
    """The uniform or exponential average of ``model``'s parameters over the steps taken
    since :meth:`start`; :meth:`swapped_in` evaluates with it."""

    def __init__(self, model: nn.Module, kind: Average, decay: float) -> None:
        if kind is Average.none:
            raise ValueError("WeightAverage needs trainer.average=uniform or ema")
        self.params = list(model.parameters())
        self.kind, self.decay = kind, decay
        self.average: list[torch.Tensor] | None = None  # one tensor per parameter, once started
        self.steps = 0  # iterates averaged so far

    @property
    def started(self) -> bool:
        return self.average is not None

    def start(self) -> None:
        """Begin averaging with the next step's iterate (the current weights are not counted)."""
        self.average = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        """Add the current iterate (call after every optimiser step once started)."""
        if self.average is None:
            return
        self.steps += 1
        weight = 1.0 / self.steps if self.kind is Average.uniform else 1.0 - self.decay
        if self.steps == 1:
            weight = 1.0  # the first iterate is the average
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], weight)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside it the model holds the averaged weights; the trained ones come back on exit."""
        if self.average is None or self.steps == 0:
            yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], saved)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "steps": self.steps,
                "average": [t.clone() for t in self.average] if self.average is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind.value:
            raise ValueError(f"the checkpoint averages {state['kind']}, the run {self.kind.value}")
        self.steps = state["steps"]
        average = state["average"]
        self.average = None if average is None else [
            t.to(device=p.device, dtype=p.dtype) for t, p in zip(average, self.params)]
