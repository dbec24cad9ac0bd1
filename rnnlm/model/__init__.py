"""The language model: AWD-LSTM with pluggable recurrent layers."""

from .awd_lstm import AWDLSTM, LMOutput, count_parameters, recurrent_layer, repackage_hidden

__all__ = ["AWDLSTM", "LMOutput", "count_parameters", "recurrent_layer", "repackage_hidden"]
