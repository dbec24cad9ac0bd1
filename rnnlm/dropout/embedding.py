"""Embedding (word) dropout, AWD-LSTM's ``dropoute`` (Gal & Ghahramani 2016, Sec. 4.1;
Merity et al. 2017, arXiv 1708.02182, Sec. 4.3).

Whole word types are dropped: a word's embedding row is zeroed for *every*
occurrence in the minibatch, and kept rows are scaled by 1/(1-p).

The AWD reference multiplies the whole (V, D) matrix by a (V, 1) mask each
forward, materialising a masked copy of the matrix. We sample the (V,) mask and
scale only the gathered rows: the same distribution at O(T * B * D) instead of
O(V * D), and the gradient still reaches the embedding weight.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StochasticModule, bernoulli_mask


class EmbeddingDropout(StochasticModule):
    """Look up ``tokens (T, B)`` in ``embedding`` with word-type dropout -> ``(T, B, D)``."""

    def __init__(self, embedding: nn.Embedding, p: float) -> None:
        super().__init__()
        self.embedding = embedding
        self.p = p

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(tokens)  # (T, B, D)
        if not self.stochastic or self.p == 0:
            return emb
        weight = self.embedding.weight
        keep = self.held_mask("keep", lambda: bernoulli_mask((weight.size(0),), self.p, weight))  # (V,)
        return emb * keep[tokens].unsqueeze(-1)  # (T, B, 1) gathered from the (V,) mask

    def extra_repr(self) -> str:
        return f"p={self.p}"

