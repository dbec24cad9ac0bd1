"""The continuous cache pointer (rnnlm.evaluation.pointer) on tiny models and hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_lm

from rnnlm.evaluation.pointer import PointerCache, PointerSettings, evaluate_pointer, pointer_log_probs
from rnnlm.model import AWDLSTM
from rnnlm.training import evaluate

V = 30


@pytest.fixture(scope="module")
def model() -> AWDLSTM:
    return tiny_lm(V, nhid=12).eval()


def stream(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Data ``(length, batch)`` with repeats, so that a cache helps."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, V, (7,), generator=g)
    noise = torch.randint(0, V, (length, batch), generator=g)
    rep = phrase.repeat(length // 7 + 1)[:length].unsqueeze(1).expand(length, batch)
    return torch.where(torch.rand(length, batch, generator=g) < 0.6, rep, noise).contiguous()


def test_lambda_zero_is_exactly_the_standard_evaluation(model):
    data = stream(120, batch=3)
    for bptt in (7, 20):
        standard = evaluate(model, data, bptt)
        assert evaluate_pointer(model, data, bptt, PointerSettings(window=10, lambd=0.0)).loss == standard
    # No position has a full window yet: the vocabulary distribution alone, also exactly.
    assert evaluate_pointer(model, data, 7, PointerSettings(window=500, lambd=0.3)).loss == evaluate(model, data, 7)


def by_hand(logits, h, targets, window, theta, lam, start):
    """p = (1 - lam) p_vocab + lam p_ptr for one stream, one position at a time (T, V)."""
    T, V_ = logits.shape
    out = torch.empty(T, V_, dtype=torch.float64)
    for t in range(T):
        p = torch.softmax(logits[t].double(), -1)
        first = max(0, t - window)
        use = t > window if start == "full" else t >= 1
        if use:
            scores = [theta * float(h[t].double() @ h[j].double()) for j in range(first, t)]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            ptr = torch.zeros(V_, dtype=torch.float64)
            for j, w in zip(range(first, t), weights):
                ptr[int(targets[j])] += w / total  # word w_{j+1}, already read at position j+1 <= t
            p = (1 - lam) * p + lam * ptr
        out[t] = p
    return out


@pytest.mark.parametrize("start", ["full", "partial"])
def test_mixture_matches_the_formula_computed_by_hand(start):
    g = torch.Generator().manual_seed(5)
    T, B, H, window, theta, lam = 11, 2, 3, 4, 0.7, 0.25
    logits = torch.randn(T, B, V, generator=g)
    h = torch.randn(T, B, H, generator=g)
    targets = torch.randint(0, 5, (T, B), generator=g)  # few words: repeats in the window
    cache = PointerCache(window)
    settings = PointerSettings(window=window, theta=theta, lambd=lam, start=start)
    # Two segments (4 + 7 positions): the cache carries the first into the second.
    got = torch.cat([
        pointer_log_probs(logits[:4], h[:4], targets[:4], cache, settings),
        pointer_log_probs(logits[4:], h[4:], targets[4:], cache, settings),
    ]).exp()
    for b in range(B):
        want = by_hand(logits[:, b], h[:, b], targets[:, b], window, theta, lam, start)
        torch.testing.assert_close(got[:, b].double(), want, rtol=1e-5, atol=1e-7)
    assert cache.seen == T and cache.keys.shape == (window, B, H)


def test_full_window_rule_of_the_reference():
    """start=full: positions 0..window use p_vocab only (awd-lstm-lm: start_idx + idx > window)."""
    g = torch.Generator().manual_seed(2)
    T, window = 9, 3
    logits, h = torch.randn(T, 1, V, generator=g), torch.randn(T, 1, 4, generator=g)
    targets = torch.randint(0, V, (T, 1), generator=g)
    log_p = pointer_log_probs(logits, h, targets, PointerCache(window), PointerSettings(window, 1.0, 0.5))
    vocab = torch.log_softmax(logits, -1)
    assert torch.equal(log_p[: window + 1], vocab[: window + 1])
    assert not torch.allclose(log_p[window + 1], vocab[window + 1])


def test_never_looks_at_the_current_target():
    """Changing target t (and everything after it) leaves the distribution at every position <= t alone."""
    g = torch.Generator().manual_seed(3)
    T, window, t = 12, 5, 8
    logits, h = torch.randn(T, 2, V, generator=g), torch.randn(T, 2, 4, generator=g)
    targets = torch.randint(0, 4, (T, 2), generator=g)
    changed = targets.clone()
    changed[t:] = (changed[t:] + 1) % V
    settings = PointerSettings(window, 1.0, 0.5, "partial")
    a = pointer_log_probs(logits, h, targets, PointerCache(window), settings)
    b = pointer_log_probs(logits, h, changed, PointerCache(window), settings)
    assert torch.equal(a[: t + 1], b[: t + 1])
    assert not torch.equal(a[t + 1:], b[t + 1:])


def test_independent_of_bptt_and_streams_stay_apart(model):
    data = stream(90, batch=2, seed=4)
    settings = PointerSettings(window=12, theta=0.8, lambd=0.3)
    a = evaluate_pointer(model, data, 5, settings, keep_token_losses=True)
    b = evaluate_pointer(model, data, 33, settings, keep_token_losses=True)
    torch.testing.assert_close(a.token_losses, b.token_losses, rtol=1e-5, atol=1e-6)
    for col in range(2):  # each batch column is its own stream with its own cache
        alone = evaluate_pointer(model, data[:, col:col + 1], 5, settings, keep_token_losses=True)
        torch.testing.assert_close(alone.token_losses[:, 0], a.token_losses[:, col], rtol=1e-5, atol=1e-6)


def test_pointer_helps_on_repeated_text(model):
    data = stream(200, seed=6)
    assert evaluate_pointer(model, data, 20, PointerSettings(window=30, theta=1.0, lambd=0.3)).loss < evaluate(
        model, data, 20
    )


@pytest.mark.parametrize("bad", [dict(window=0), dict(theta=-1.0), dict(lambd=1.5), dict(start="half")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PointerSettings(**bad)
