"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, arXiv 1709.07432):
the model keeps learning from the test stream it is scoring.

The stream ``(L, B)`` is cut into segments of ``bptt`` tokens (Krause et al.: 5, batch
1). Each segment is first **scored** with the current weights, then its loss gradient
updates them, so every token is predicted by weights that have seen only the tokens
before it. The hidden state is carried across segments (detached). Two rules, per
parameter tensor theta (theta_0 = the trained weights, g = gradient of the segment's
mean loss):

``rms`` (their update rule, benkrause/dynamic-evaluation ``dynamiceval.py``)::

    theta <- theta + decay * r * (theta_0 - theta) - lr * g / (ms + epsilon)

  ms = sqrt(mean of g_train^2) per element, gathered once over the training data with
  masks off (batch ``stats_batch_size``, segments of ``bptt``; :func:`gradient_statistics`);
  r = ms / mean(ms), the mean taken per tensor and then over tensors, clipped at
  1 / decay so the decay never overshoots theta_0. ``decay`` is their lambda.

``sgd`` (their SGD baseline, with the same global prior as an option)::

    theta <- theta + decay * (theta_0 - theta) - lr * g

``lr = 0`` leaves every weight at theta_0 bit for bit (the decay term pulls theta_0
toward itself), so it reproduces the standard evaluation. The trained weights are
restored when the evaluation ends. Cost per segment: one forward, one backward and
an update touching every weight, so short segments cost more per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from ..data import get_batch
from ..model import AWDLSTM, repackage_hidden
from .scoring import Score, ScoreAccumulator

RULES = ("rms", "sgd")


# Krause et al. 2018, AWD-LSTM on PTB and WT2: benkrause/dynamic-evaluation README,
# `dynamiceval.py --lr 0.002 --lamb 0.02 --epsilon 0.001 --oldhyper`. --oldhyper turns them into
# the form of the paper's equations, which the update below uses: lambda / (parameter
# tensors), lr and epsilon / sqrt(statistics batches).
OLDHYPER_LR = 0.002
OLDHYPER_DECAY = 0.02
OLDHYPER_EPSILON = 0.001


@dataclass(frozen=True)
class DynamicSettings:
    """Update rule and its step size ``lr``, ``decay`` toward the trained weights (lambda), and
    the RMS rule's ``epsilon``. ``None`` is derived from the gradient statistics by
    :meth:`resolved` (rms: as ``dynamiceval.py --oldhyper``; sgd: decay 0)."""

    rule: str = "rms"
    lr: Optional[float] = None
    decay: Optional[float] = None
    epsilon: Optional[float] = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"dynamic.rule={self.rule} must be one of: {', '.join(RULES)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"dynamic.lr={self.lr} must be a finite number >= 0, e.g. 5e-5 (0 = standard)")
        if self.decay is not None and not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"dynamic.decay={self.decay} must be in [0, 1], e.g. 0.002")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"dynamic.epsilon={self.epsilon} must be a positive number, e.g. 2e-5")

    def resolved(self, stats: Optional["GradientStats"]) -> "DynamicSettings":
        """Every value set. rms: ``lr = 0.002 / sqrt(batches)``, ``epsilon = 0.001 /
        sqrt(batches)``, ``decay = 0.02 / tensors`` for what is unset, with the statistics'
        own counts (``dynamiceval.py --oldhyper``; on PTB at batch 100 and bptt 5 that is 1859
        batches and 14 tensors of AWD-LSTM: 4.64e-5, 2.32e-5, 1.43e-3). sgd: decay 0."""
        if self.rule == "sgd":
            if self.lr is None:
                raise ValueError("dynamic.rule=sgd needs dynamic.lr (the RMS rule's default does not suit plain SGD)")
            return replace(self, decay=self.decay or 0.0, epsilon=None)
        if stats is None:
            raise ValueError("dynamic.rule=rms needs gradient statistics from the training data")
        root = math.sqrt(stats.batches)
        return replace(
            self,
            lr=OLDHYPER_LR / root if self.lr is None else self.lr,
            decay=OLDHYPER_DECAY / len(stats.ms) if self.decay is None else self.decay,
            epsilon=OLDHYPER_EPSILON / root if self.epsilon is None else self.epsilon,
        )


@dataclass
class GradientStats:
    """Per-element RMS ``ms`` of training gradients and decay rates ``r``, one tensor per
    parameter of ``model.parameters()``; ``batches`` gradients went into them."""

    ms: list[torch.Tensor]
    rates: list[torch.Tensor]
    batches: int


def _parameters(model: AWDLSTM) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def gradient_statistics(
    model: AWDLSTM, train: torch.Tensor, bptt: int, max_batches: Optional[int] = None
) -> GradientStats:
    """RMS gradients of the mean segment loss over ``train (L, B)`` (masks off, state carried).

    Segments of ``bptt`` rows start at 0, bptt, ... while the start is below L - 2, as
    dynamiceval.py's ``gradstat`` loop (``while i < L - 1 - 1``): no one-row segment at L - 2.
    ``max_batches`` bounds the number of segments (their ``--max_batches``; None: all).
    """
    model.eval()
    params = _parameters(model)
    squares = [torch.zeros_like(p) for p in params]
    hidden = model.init_hidden(train.size(1))
    batches = 0
    for i in range(0, train.size(0) - 2, bptt):
        if max_batches is not None and batches >= max_batches:
            break
        inputs, targets = get_batch(train, i, bptt)
        with torch.enable_grad():
            out = model(inputs, repackage_hidden(hidden))
            loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
            grads = torch.autograd.grad(loss, params)
        hidden = out.hidden
        with torch.no_grad():
            for sq, g in zip(squares, grads):
                sq.addcmul_(g, g)
        batches += 1
    ms = [(sq / batches).sqrt_() for sq in squares]
    mean = sum(m.mean() for m in ms) / len(ms)
    return GradientStats(ms, [m / mean for m in ms], batches)


class _Update:
    """The per-segment update of one rule, with its constant factors precomputed.

    Two fused in-place passes over all tensors at once (``_foreach`` ops, a few kernels per
    segment on CUDA): ``theta.lerp_(theta_0, a)`` (the decay; exact when theta == theta_0) and
    ``theta.addcmul_(s, g, value=-1)`` / ``theta.add_(g, -lr)``.
    """

    def __init__(self, params, theta0, settings: DynamicSettings, stats: Optional[GradientStats]) -> None:
        self.params, self.theta0, self.settings = params, theta0, settings
        self.pull: list = [settings.decay] * len(params)
        self.step: list = [settings.lr] * len(params)
        if settings.rule == "rms":
            if stats is None:
                raise ValueError("dynamic.rule=rms needs gradient statistics from the training data")
            cap = 1.0 / settings.decay if settings.decay > 0 else math.inf
            self.pull = [settings.decay * r.clamp(max=cap) for r in stats.rates]
            self.step = [settings.lr / (ms + settings.epsilon) for ms in stats.ms]

    @torch.no_grad()
    def __call__(self, grads) -> None:
        grads = list(grads)
        if self.settings.decay > 0:
            if self.settings.rule == "rms":  # a per-element pull r * decay
                torch._foreach_lerp_(self.params, self.theta0, self.pull)
            else:
                torch._foreach_lerp_(self.params, self.theta0, self.settings.decay)
        if self.settings.rule == "rms":
            torch._foreach_addcmul_(self.params, self.step, grads, value=-1.0)
        else:
            torch._foreach_add_(self.params, grads, alpha=-self.settings.lr)


def evaluate_dynamic(
    model: AWDLSTM,
    data: torch.Tensor,
    bptt: int,
    settings: DynamicSettings,
    stats: Optional[GradientStats] = None,
    keep_token_losses: bool = False,
) -> Score:
    """Loss of ``model`` on ``data (L, B)`` under dynamic evaluation; weights restored after.

    Each segment's tokens are scored before the segment's gradient is applied. Settings left
    unset are derived by :meth:`DynamicSettings.resolved` from ``stats``.
    """
    model.eval()
    params = _parameters(model)
    theta0 = [p.detach().clone() for p in params]
    update = _Update(params, theta0, settings.resolved(stats), stats)
    hidden = model.init_hidden(data.size(1))
    acc = ScoreAccumulator(keep_token_losses)
    try:
        for i in range(0, data.size(0) - 1, bptt):
            inputs, targets = get_batch(data, i, bptt)  # (T, B) each
            with torch.enable_grad():
                out = model(inputs, repackage_hidden(hidden))
                logits, flat = out.logits.flatten(0, 1), targets.flatten()
                total = F.cross_entropy(logits, flat, reduction="sum")
                # Scored first: this segment's loss is read before any update it causes.
                per_token = None
                if keep_token_losses:
                    per_token = F.cross_entropy(logits.detach(), flat, reduction="none").view_as(targets)
                acc.add(total, targets.numel(), per_token)
                grads = torch.autograd.grad(total / targets.numel(), params)
            update(grads)
            hidden = out.hidden
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, theta0):
                p.copy_(p0)
    return acc.score()
