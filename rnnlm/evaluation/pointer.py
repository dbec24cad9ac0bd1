"""Continuous cache pointer (Grave, Joulin & Usunier 2017, arXiv 1612.04426), as
awd-lstm-lm ``pointer.py`` applies it to a trained AWD-LSTM, vectorised.

At position t of a stream the model predicts the target w_{t+1} from its last-layer
output h_t (``LMOutput.raw_output``, before output dropout; in ``eval()`` the two are
equal). The cache holds the previous ``window`` pairs (h_j, w_{j+1}) and mixes::

    p_ptr(w | t) = sum_{j in cache(t), w_{j+1} = w} softmax_j(theta * h_t . h_j)
    p(w | t)     = (1 - lambda) * p_vocab(w | t) + lambda * p_ptr(w | t)

cache(t) = {j : t - window <= j < t}: only pairs whose word w_{j+1} (j < t) has
already been read as an input, so the current target w_{t+1} is never looked at.

First tokens of a stream (``start``):

- ``full`` (default, the reference): the pointer is used only at positions
  t > window, where the cache holds a full window (awd-lstm-lm tests
  ``start_idx + idx > window``); positions 0..window use p_vocab alone. (Its
  trimmed history also makes it skip the first position of every later BPTT
  segment, a dependence on ``--bptt`` that is not copied here.)
- ``partial`` (Grave et al.'s cache): from t = 1 on, over the pairs that exist.

Each stream (batch column) has its own cache, carried across BPTT segments, so the
result does not depend on ``bptt`` (awd-lstm-lm README, "Pointer note"). Per
segment of T positions the work is one batched (T x (M + T)) score matmul against
the M cached and T new states, a banded mask, a softmax, and one ``scatter_add``
of the attention onto the vocabulary; no Python loop over tokens. The mixture is
taken in log space, so ``lambda = 0`` gives exactly ``log_softmax(logits)`` and
the standard perplexity to the last bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..training.evaluate import carried_segments
from ..model import AWDLSTM
from .scoring import Score, ScoreAccumulator

STARTS = ("full", "partial")


@dataclass(frozen=True)
class PointerSettings:
    """``window`` cached positions, softmax scale ``theta``, mixture weight ``lambd``
    (the paper's lambda, ``pointer.lambda`` on the command line), ``start`` (see module)."""

    window: int = 500
    theta: float = 1.0
    lambd: float = 0.1
    start: str = "full"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"pointer.window={self.window} must be a positive number of tokens, e.g. 500")
        if not (math.isfinite(self.theta) and self.theta >= 0):
            raise ValueError(f"pointer.theta={self.theta} must be a finite number >= 0, e.g. 1.0")
        if not 0.0 <= self.lambd <= 1.0:
            raise ValueError(f"pointer.lambda={self.lambd} must be in [0, 1], e.g. 0.1")
        if self.start not in STARTS:
            raise ValueError(f"pointer.start={self.start} must be one of: {', '.join(STARTS)}")


class PointerCache:
    """The last ``window`` (h_j, w_{j+1}) pairs of each of B streams.

    ``keys (M, B, H)``, ``words (M, B)`` with M <= window; ``seen`` counts the positions
    pushed so far (the stream position of the next query).
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.keys: torch.Tensor | None = None
        self.words: torch.Tensor | None = None
        self.seen = 0

    def push(self, keys: torch.Tensor, words: torch.Tensor) -> None:
        """Append ``keys (T, B, H)`` and their next words ``words (T, B)``; keep the last window."""
        self.seen += words.size(0)
        if self.keys is not None:
            keys, words = torch.cat([self.keys, keys]), torch.cat([self.words, words])
        self.keys, self.words = keys[-self.window:], words[-self.window:]


def pointer_log_probs(
    logits: torch.Tensor,
    queries: torch.Tensor,
    targets: torch.Tensor,
    cache: PointerCache,
    settings: PointerSettings,
) -> torch.Tensor:
    """``log p(w | t)`` of the mixture for one segment, ``(T, B, V)``; then caches the segment.

    ``logits (T, B, V)`` and ``queries (T, B, H)`` (h_t) are the model's outputs for the
    segment, ``targets (T, B)`` its next words: they enter the cache only as values of
    later positions (column t's own target is masked out of its scores).
    """
    T, B, V = logits.shape
    log_vocab = F.log_softmax(logits, dim=-1)  # (T, B, V)
    M = 0 if cache.keys is None else cache.keys.size(0)
    keys = queries if cache.keys is None else torch.cat([cache.keys, queries])  # (M + T, B, H)
    words = targets if cache.words is None else torch.cat([cache.words, targets])  # (M + T, B)
    w = settings.window

    # Query t sits at stream position g = seen + t; key k at seen - M + k. Allowed keys:
    # g - window <= position < g, i.e. t + M - window <= k < t + M (never k = t + M, itself).
    t = torch.arange(T, device=logits.device).unsqueeze(1)  # (T, 1)
    k = torch.arange(M + T, device=logits.device).unsqueeze(0)  # (1, M + T)
    allowed = (k < t + M) & (k >= t + M - w)  # (T, M + T)
    g = cache.seen + t.squeeze(1)  # (T,)
    active = g > w if settings.start == "full" else g >= 1  # (T,) positions that use the pointer

    cache.push(queries, targets)
    if settings.lambd == 0.0 or not bool(active.any()):
        return log_vocab

    scores = settings.theta * torch.bmm(queries.transpose(0, 1), keys.permute(1, 2, 0))  # (B, T, M + T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    attn = torch.softmax(scores, dim=-1)  # (B, T, M + T); rows of inactive positions may be NaN
    attn = torch.where(active.view(1, T, 1), attn, torch.zeros((), dtype=attn.dtype, device=attn.device))
    p_ptr = attn.new_zeros(B, T, V).scatter_add_(2, words.t().unsqueeze(1).expand(B, T, M + T), attn)
    p_ptr = p_ptr.transpose(0, 1)  # (T, B, V)

    lam = torch.where(active, settings.lambd, 0.0).to(log_vocab.dtype).view(T, 1, 1)  # (T, 1, 1)
    return torch.logaddexp(torch.log1p(-lam) + log_vocab, torch.log(lam) + torch.log(p_ptr))


@torch.no_grad()
def evaluate_pointer(
    model: AWDLSTM, data: torch.Tensor, bptt: int, settings: PointerSettings, keep_token_losses: bool = False
) -> Score:
    """Loss of ``model`` with the cache pointer on ``data (L, B)`` (masks off).

    awd-lstm-lm ``pointer.py`` scores PTB and WikiText-2 with batch 1 (valid and test).
    """
    model.eval()
    cache = PointerCache(settings.window)
    acc = ScoreAccumulator(keep_token_losses)
    for out, targets in carried_segments(model, data, bptt):  # targets (T, B)
        log_p = pointer_log_probs(out.logits, out.raw_output, targets, cache, settings)  # (T, B, V)
        flat_p, flat_t = log_p.flatten(0, 1), targets.flatten()
        per_token = F.nll_loss(flat_p, flat_t, reduction="none").view_as(targets) if keep_token_losses else None
        acc.add(F.nll_loss(flat_p, flat_t, reduction="sum"), targets.numel(), per_token)
    return acc.score()
