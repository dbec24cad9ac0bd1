"""What every evaluation method returns: the mean per-token loss of a stream.

Losses are in nats per target token, perplexity = exp(loss), accumulated exactly as
:func:`rnnlm.training.evaluate` does (a float sum of each BPTT segment's summed
cross-entropy), so a method that reduces to the standard evaluation reproduces its
number to the last bit. Optionally the per-token losses are kept, ``(L - 1, B)`` in
stream order for data ``(L, B)``: the tests use them to check that no method looks
ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..training import perplexity


@dataclass
class Score:
    loss: float  # mean nats per target token
    tokens: int  # target tokens scored
    token_losses: Optional[torch.Tensor] = None  # (L - 1, B) nats, when asked for

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)


class ScoreAccumulator:
    """Sum of per-segment losses; keeps the ``(T, B)`` per-token losses if ``keep``."""

    def __init__(self, keep: bool = False) -> None:
        self.total = 0.0
        self.count = 0
        self.keep = keep
        self.parts: list[torch.Tensor] = []

    def add(self, segment_sum: float | torch.Tensor, tokens: int, per_token: Optional[torch.Tensor] = None) -> None:
        """A segment's summed loss, a float or a 0-d tensor; tensors are summed on their device
        in float64 (the same sum as of their float values) and read once, by :meth:`score`."""
        if isinstance(segment_sum, torch.Tensor):
            segment_sum = segment_sum.detach().double()
        self.total = self.total + segment_sum
        self.count += tokens
        if self.keep and per_token is not None:
            self.parts.append(per_token.detach().cpu())

    def score(self) -> Score:
        losses = torch.cat(self.parts) if self.keep and self.parts else None
        return Score(float(self.total) / self.count, self.count, losses)
