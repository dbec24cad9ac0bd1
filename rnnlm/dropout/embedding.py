"""Embedding (word) dropout, AWD-LSTM's ``dropoute`` (Gal & Ghahramani 2016, Sec. 4.1;
Merity et al. 2017, arXiv 1708.02182, Sec. 4.3).

A dropped token's whole embedding row is zeroed and kept rows are scaled by 1/(1-p), so
the expectation over masks is the plain lookup. Three ways to tie the drop decisions
(``dropout.embedding_mask``), each drawn once per forward, i.e. per BPTT segment of
``tokens (T, B)``:

* ``batch`` (awd-lstm-lm ``embedded_dropout``): one (V,) mask over word types; a word type
  is dropped or kept for *every* occurrence in the segment, in all B sequences;
* ``sequence`` (Gal's LM code after its fix, BayesianRNN ``main_new_dropout_SOTA_v3.lua``
  ``sample_noise``, commit 604d7be of January 2017): one (B, V) mask; a word type is dropped
  or kept for all its occurrences in one sequence (column b) of the segment, independently
  in each sequence;
* ``token`` (the same script before that fix, arXiv v3 of May 2016, which produced Table 1 of
  Gal & Ghahramani 2016): one (T, B) mask; every token position gets its own decision, so one
  word at two positions of a sequence can be kept at one and dropped at the other. That
  script's tying loop compared whole rows of the data tensor (``state.data[pos] == x``),
  which is never true for two Lua tensors, so its per-token Bernoulli draws
  (``noise_x[i]:bernoulli``, one per step and sequence) were never overwritten (BayesianRNN
  readme, "Update 4").

The AWD reference multiplies the whole (V, D) matrix by a (V, 1) mask each forward,
materialising a masked copy of the matrix. We sample the mask and scale only the
gathered rows: the same distribution at O(T * B * D) instead of O(V * D), and the
gradient still reaches the embedding weight. Gal's fixed code draws one mask per (step,
sequence) and copies it to later occurrences of the same word in that sequence: the same
distribution as one draw per (sequence, word type).

Every mask comes from the module's generator, the run's ``dropout`` stream
(:mod:`rnnlm.training.streams`). Inside an MC pass (:func:`~rnnlm.dropout.base.mc_pass`,
with word dropout kept on) the ``batch`` and ``sequence`` masks are held for the whole pass;
the ``token`` mask belongs to positions, not to word types, and is drawn afresh each
forward, as per-step masks are.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import StochasticModule

WORD_MASKS = ("batch", "sequence", "token")


class EmbeddingDropout(StochasticModule):
    """Look up ``tokens (T, B)`` in ``embedding`` with word dropout -> ``(T, B, D)``.

    ``mask``: ``batch``, a (V,) mask over word types; ``sequence``, a (B, V) mask, one per
    sequence; ``token``, a (T, B) mask, one decision per token position (module docstring).
    """

    def __init__(self, embedding: nn.Embedding, p: float, mask: str = "batch") -> None:
        super().__init__()
        if mask not in WORD_MASKS:
            raise ValueError(f"mask={mask!r} is not one of {', '.join(WORD_MASKS)}")
        self.embedding = embedding
        self.p = p
        self.mask = str(getattr(mask, "value", mask))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(tokens)  # (T, B, D)
        if not self.stochastic or self.p == 0:
            return emb
        weight = self.embedding.weight
        if self.mask == "token":
            keep = self.dropout_mask(tuple(tokens.shape), self.p, weight)  # (T, B), drawn every forward
            return emb * keep.unsqueeze(-1)  # (T, B, 1)
        if self.mask == "sequence":
            shape = (tokens.size(1), weight.size(0))
            keep = self.held_mask("keep", lambda: self.dropout_mask(shape, self.p, weight))  # (B, V)
            column = torch.arange(tokens.size(1), device=tokens.device)
            return emb * keep[column, tokens].unsqueeze(-1)  # (T, B, 1): keep[b, tokens[t, b]]
        keep = self.held_mask("keep", lambda: self.dropout_mask((weight.size(0),), self.p, weight))  # (V,)
        return emb * keep[tokens].unsqueeze(-1)  # (T, B, 1) gathered from the (V,) mask

    def extra_repr(self) -> str:
        return f"p={self.p}" + (f", mask={self.mask}" if self.mask != "batch" else "")
