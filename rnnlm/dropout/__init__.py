"""Every dropout of the literature as a small module; docs/dropout.md tabulates them.

Recurrent dropouts are schemes (``dropout.recurrent.kind``), one module each in
:mod:`rnnlm.dropout.schemes`; :func:`recurrent_layer` builds the layer a config names.
"""

from .base import StochasticModule, bernoulli_mask, mc_pass
from .embedding import EmbeddingDropout
from .scheme import RecurrentScheme, get_scheme, recurrent_layer, registered_schemes
from .sequence import SequenceDropout
from .step_lstm import StepLSTM, StepScheme, plain_lstm
from .schemes.weight_drop import WeightDropLSTM

__all__ = [
    "EmbeddingDropout",
    "RecurrentScheme",
    "SequenceDropout",
    "StepLSTM",
    "StepScheme",
    "StochasticModule",
    "WeightDropLSTM",
    "bernoulli_mask",
    "get_scheme",
    "mc_pass",
    "plain_lstm",
    "recurrent_layer",
    "registered_schemes",
]
