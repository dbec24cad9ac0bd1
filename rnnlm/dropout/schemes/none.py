"""No recurrent dropout: the layer is an ``nn.LSTM``."""

from __future__ import annotations

from torch import nn

from ...checks import ConfigError
from ..cpu_kernels import lstm_kernel
from ..scheme import RecurrentScheme


class LSTM(nn.LSTM):
    """``nn.LSTM`` ``(T, B, I) -> (T, B, H)`` whose CPU kernel runs in fp32 under autocast where
    it has no bf16 form (:func:`rnnlm.dropout.cpu_kernels.lstm_kernel`)."""

    def forward(self, x, hx=None):
        return lstm_kernel(super().forward, x, hx)


class NoRecurrentDropout(RecurrentScheme):
    """h_{t-1} -> gates undropped; other dropout sites stay as configured."""

    name = "none"

    @classmethod
    def validate(cls, rate: float, mask: str, cell_rate: float = 0.0, per_gate_input: bool = False) -> None:
        if rate:
            raise ConfigError(f"dropout.recurrent.rate={rate} has no effect with dropout.recurrent.kind=none; "
                              f"set dropout.recurrent.rate=0 (or use dropout/recurrent=none).")
        super().validate(rate, mask, cell_rate, per_gate_input)

    @classmethod
    def build(cls, input_size: int, hidden_size: int, rate: float, mask: str, cell_rate: float = 0.0,
              input_rate: float = 0.0) -> nn.LSTM:
        return LSTM(input_size, hidden_size)
