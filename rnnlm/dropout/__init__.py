"""Every dropout of the literature as a small module; docs/dropout.md tabulates them."""

from .base import StochasticModule, bernoulli_mask, mc_pass, set_mc_dropout
from .embedding import EmbeddingDropout
from .sequence import SequenceDropout
from .step_lstm import StepLSTM, StepMasks, plain_lstm
from .weight_drop import WeightDropLSTM
from .recurrent import recurrent_layer

__all__ = [
    "EmbeddingDropout",
    "SequenceDropout",
    "StepLSTM",
    "StepMasks",
    "StochasticModule",
    "WeightDropLSTM",
    "bernoulli_mask",
    "mc_pass",
    "plain_lstm",
    "recurrent_layer",
    "set_mc_dropout",
]
