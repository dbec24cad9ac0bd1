"""The recurrent layer for each ``dropout.recurrent.kind``: the one place that maps a scheme
of the config to the module that implements it.

* ``none``: ``nn.LSTM``.
* ``weight_drop``: :class:`~rnnlm.dropout.weight_drop.WeightDropLSTM`, DropConnect on W_hh
  with the fused kernel (Merity et al. 2017).
* ``variational``, ``semeniuta``, ``zoneout``: :class:`~rnnlm.dropout.step_lstm.StepLSTM`, a
  step loop, because their masks act on per-sample states (Gal & Ghahramani 2016;
  Semeniuta et al. 2016; Krueger et al. 2016).
"""

from __future__ import annotations

from torch import nn

from ..config import RecurrentDropoutConfig, RecurrentKind
from .step_lstm import StepLSTM
from .weight_drop import WeightDropLSTM


def recurrent_layer(input_size: int, hidden_size: int, cfg: RecurrentDropoutConfig,
                    input_rate: float = 0.0) -> nn.Module:
    """One LSTM layer ``(T, B, I) -> (T, B, H)`` carrying the configured recurrent dropout.

    ``weight_drop`` keeps the fused kernel; Gal, Semeniuta and zoneout masks act on
    per-sample states and need the step loop of :class:`StepLSTM`. ``input_rate``:
    the rate of the per-gate input masks when ``cfg.per_gate_input``.
    """
    kind = RecurrentKind(cfg.kind)
    if kind is RecurrentKind.none:
        return nn.LSTM(input_size, hidden_size)
    if kind is RecurrentKind.weight_drop:
        return WeightDropLSTM(input_size, hidden_size, cfg.rate, mask=cfg.mask.value)
    return StepLSTM(
        input_size, hidden_size, kind=kind.value, rate=cfg.rate, mask=cfg.mask.value,
        cell_rate=cfg.cell_rate, input_rate=input_rate if cfg.per_gate_input else 0.0,
    )
