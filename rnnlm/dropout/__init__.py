"""Every dropout of the literature as a small module; docs/dropout.md tabulates them."""

from .base import StochasticModule, bernoulli_mask, mc_pass, set_mc_dropout
from .embedding import EmbeddingDropout
from .sequence import SequenceDropout
from .weight_drop import WeightDropLSTM

__all__ = [
    "EmbeddingDropout",
    "SequenceDropout",
    "StochasticModule",
    "WeightDropLSTM",
    "bernoulli_mask",
    "mc_pass",
    "set_mc_dropout",
]
