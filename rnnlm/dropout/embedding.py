"""Embedding (word) dropout, AWD-LSTM's ``dropoute`` (Gal & Ghahramani 2016, Sec. 4.1;
Merity et al. 2017, arXiv 1708.02182, Sec. 4.3).

Whole word types are dropped, and kept rows are scaled by 1/(1-p). Two ways to tie a
word's mask:

* ``batch`` (awd-lstm-lm ``embedded_dropout``): one (V,) mask; a word's embedding row is
  zeroed for *every* occurrence in the minibatch;
* ``sequence`` (Gal's LM code, BayesianRNN ``main_new_dropout_SOTA_v3.lua``
  ``sample_noise``): one (B, V) mask; a word is dropped or kept for all its occurrences
  in one sequence of the segment, independently in each sequence.

The AWD reference multiplies the whole (V, D) matrix by a (V, 1) mask each forward,
materialising a masked copy of the matrix. We sample the mask and scale only the
gathered rows: the same distribution at O(T * B * D) instead of O(V * D), and the
gradient still reaches the embedding weight. Gal's code draws one mask per (step,
sequence) and copies it to later occurrences of the same word in that sequence: the same
distribution as one draw per (sequence, word type).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StochasticModule


class EmbeddingDropout(StochasticModule):
    """Look up ``tokens (T, B)`` in ``embedding`` with word-type dropout -> ``(T, B, D)``;
    ``per_sequence``: a (B, V) mask, one per sequence, instead of one (V,) mask."""

    def __init__(self, embedding: nn.Embedding, p: float, per_sequence: bool = False) -> None:
        super().__init__()
        self.embedding = embedding
        self.p = p
        self.per_sequence = per_sequence

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(tokens)  # (T, B, D)
        if not self.stochastic or self.p == 0:
            return emb
        weight = self.embedding.weight
        if self.per_sequence:
            shape = (tokens.size(1), weight.size(0))
            keep = self.held_mask("keep", lambda: self.dropout_mask(shape, self.p, weight))  # (B, V)
            column = torch.arange(tokens.size(1), device=tokens.device)
            return emb * keep[column, tokens].unsqueeze(-1)  # (T, B, 1): keep[b, tokens[t, b]]
        keep = self.held_mask("keep", lambda: self.dropout_mask((weight.size(0),), self.p, weight))  # (V,)
        return emb * keep[tokens].unsqueeze(-1)  # (T, B, 1) gathered from the (V,) mask

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", per_sequence=True" if self.per_sequence else "")
