"""The language model: AWD-LSTM; its recurrent layers come from ``rnnlm.dropout.recurrent``."""

from .awd_lstm import AWDLSTM, LMOutput, count_parameters, repackage_hidden

__all__ = ["AWDLSTM", "LMOutput", "count_parameters", "repackage_hidden"]
