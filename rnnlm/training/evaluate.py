"""Perplexity evaluation with the hidden state carried across BPTT segments.

The loss is averaged per token (nats); perplexity = exp(loss). The evaluation
batch size changes the result (fewer, longer streams carry more context), so
callers record it: AWD validates with batch 10 and tests with batch 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import get_batch
from ..dropout import set_mc_dropout
from ..model import AWDLSTM


def perplexity(loss: float) -> float:
    """``exp(loss)``, infinite instead of overflowing for absurd losses."""
    return math.exp(loss) if loss < 709.0 else math.inf


@torch.no_grad()
def evaluate(model: AWDLSTM, data: torch.Tensor, bptt: int) -> float:
    """Mean per-token cross-entropy (nats) of ``model`` on ``data (L, B)``, masks off."""
    model.eval()
    hidden = model.init_hidden(data.size(1))
    total, count = 0.0, 0
    for i in range(0, data.size(0) - 1, bptt):
        inputs, targets = get_batch(data, i, bptt)  # (T, B) each
        out = model(inputs, hidden)
        total += F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
        hidden = out.hidden
    return total / count


@torch.no_grad()
def evaluate_mc(model: AWDLSTM, data: torch.Tensor, bptt: int, samples: int) -> float:
    """MC-dropout loss (Gal & Ghahramani 2016): -log of the predictive probability
    averaged over ``samples`` stochastic passes (masks on, as in training).

    Each pass keeps its own hidden-state stream across segments; masks are drawn per
    BPTT segment, exactly as during training (Gal's LM code instead holds one mask per
    pass over the whole stream; with locked masks the two differ only at segment
    boundaries).
    """
    model.eval()
    set_mc_dropout(model, True)
    try:
        hiddens = [model.init_hidden(data.size(1)) for _ in range(samples)]
        total, count = 0.0, 0
        for i in range(0, data.size(0) - 1, bptt):
            inputs, targets = get_batch(data, i, bptt)
            log_sum = None  # log sum_k p_k(target): only the targets' probabilities are needed
            for k in range(samples):
                out = model(inputs, hiddens[k])
                hiddens[k] = out.hidden
                log_p = F.log_softmax(out.logits, dim=-1).gather(-1, targets.unsqueeze(-1))  # (T, B, 1)
                log_sum = log_p if log_sum is None else torch.logaddexp(log_sum, log_p)
            picked = log_sum - math.log(samples)  # log mean_k p_k(target), (T, B, 1)
            total -= picked.sum().item()
            count += targets.numel()
        return total / count
    finally:
        set_mc_dropout(model, False)
