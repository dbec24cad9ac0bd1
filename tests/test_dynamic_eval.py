"""Dynamic evaluation (rnnlm.evaluation.dynamic): lr=0 is the standard evaluation, every
segment is scored before it updates the weights, and the update rules are the ones stated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_lm

from rnnlm.data import get_batch
from rnnlm.evaluation import dynamic as dyn
from rnnlm.evaluation.dynamic import DynamicSettings, evaluate_dynamic, gradient_statistics
from rnnlm.model import AWDLSTM
from rnnlm.training import evaluate

V = 25


@pytest.fixture()
def model() -> AWDLSTM:
    return tiny_lm(V, nhid=10).eval()


def stream(length: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randint(0, V, (5,), generator=g)
    return phrase.repeat(length // 5 + 1)[:length].unsqueeze(1).repeat(1, batch).contiguous()


@pytest.fixture()
def stats(model):
    return gradient_statistics(model, torch.randint(0, V, (60, 4), generator=torch.Generator().manual_seed(9)), 5)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_lr_zero_is_the_standard_evaluation(model, stats, rule):
    data = stream(80, batch=2, seed=2)
    before = weights(model)
    settings = DynamicSettings(rule=rule, lr=0.0, decay=0.01)
    assert evaluate_dynamic(model, data, 5, settings, stats).loss == pytest.approx(evaluate(model, data, 5), rel=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


@pytest.mark.parametrize("rule", ["rms", "sgd"])
def test_learning_from_the_stream_helps_and_weights_are_restored(model, stats, rule):
    data = stream(150, seed=3)  # a repeated phrase: dynamic evaluation should learn it
    before = weights(model)
    lr = 3e-3 if rule == "rms" else 1.0
    got = evaluate_dynamic(model, data, 5, DynamicSettings(rule=rule, lr=lr, decay=0.0), stats)
    assert got.loss < evaluate(model, data, 5) - 0.1
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def causal_losses(evaluator, model, data, bptt):
    """Per-token losses of ``data`` and of a copy whose tokens from position n on differ."""
    n = 2 * bptt + 2  # inside the third segment, not on a boundary
    changed = data.clone()
    changed[n:] = (changed[n:] + 7) % V
    a = evaluator(model, data, bptt).token_losses
    b = evaluator(model, changed, bptt).token_losses
    # Target i is data[i + 1]: targets 0 .. n - 2 come before the change and must not move.
    return a, b, n - 1


def dynamic_eval(model, data, bptt):
    return evaluate_dynamic(model, data, bptt, DynamicSettings(rule="sgd", lr=2.0, decay=0.0),
                            keep_token_losses=True)


def test_no_token_is_seen_before_it_is_predicted(model):
    a, b, n = causal_losses(dynamic_eval, model, stream(40, seed=4), 5)
    assert torch.equal(a[:n], b[:n])  # the future never changes a past prediction
    assert not torch.equal(a[n:], b[n:])


def test_the_look_ahead_check_catches_update_before_scoring(model, monkeypatch):
    """The check above fails for an implementation that updates on a segment, then scores it."""

    def peeking(model, data, bptt, settings, stats=None, keep_token_losses=False):
        hidden, parts = model.init_hidden(data.size(1)), []
        params = list(model.parameters())
        theta0 = [p.detach().clone() for p in params]
        for i in range(0, data.size(0) - 1, bptt):
            inputs, targets = get_batch(data, i, bptt)
            h = [(x.detach(), c.detach()) for x, c in hidden]
            loss = F.cross_entropy(model(inputs, h).logits.flatten(0, 1), targets.flatten())
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g, alpha=-settings.lr)  # updated on the segment ...
                out = model(inputs, h)  # ... before it is scored
            parts.append(F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="none")
                         .view_as(targets))
            hidden = out.hidden
        with torch.no_grad():
            for p, p0 in zip(params, theta0):
                p.copy_(p0)
        return dyn.Score(0.0, 0, torch.cat(parts))

    monkeypatch.setattr(dyn, "evaluate_dynamic", peeking)
    a, b, n = causal_losses(
        lambda m, d, t: dyn.evaluate_dynamic(m, d, t, DynamicSettings(rule="sgd", lr=2.0, decay=0.0)), model,
        stream(40, seed=4), 5,
    )
    assert not torch.equal(a[:n], b[:n])


def test_first_segment_is_scored_with_the_trained_weights(model, stats):
    data = stream(30, seed=5)
    got = evaluate_dynamic(model, data, 5, DynamicSettings(lr=1e-2), stats, keep_token_losses=True)
    with torch.no_grad():
        out = model(data[:5], model.init_hidden(1))
        first = F.cross_entropy(out.logits.flatten(0, 1), data[1:6].flatten(), reduction="none")
    torch.testing.assert_close(got.token_losses[:5, 0], first, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got.token_losses[5:10, 0], evaluate_dynamic(
        model, data, 5, DynamicSettings(lr=0.0), stats, keep_token_losses=True).token_losses[5:10, 0])


def test_rms_update_rule_by_hand(model, stats):
    """One segment: theta_1 = theta_0 + decay * r * (theta_0 - theta_0) - lr * g / (ms + eps), then
    a second step pulls toward theta_0 with the clipped rate."""
    settings = DynamicSettings(rule="rms", lr=1e-3, decay=0.5, epsilon=1e-4)
    params = list(model.parameters())
    theta0 = [p.detach().clone() for p in params]
    update = dyn._Update(params, theta0, settings, stats)
    g1 = [torch.randn_like(p) for p in params]
    g2 = [torch.randn_like(p) for p in params]
    update(g1)
    update(g2)
    for p, p0, ms, r, a, b in zip(params, theta0, stats.ms, stats.rates, g1, g2):
        t1 = p0 - 1e-3 * a / (ms + 1e-4)
        rate = torch.clamp(r, max=1 / 0.5)
        t2 = t1 + 0.5 * rate * (p0 - t1) - 1e-3 * b / (ms + 1e-4)
        torch.testing.assert_close(p.detach(), t2, rtol=1e-5, atol=1e-5)  # terms of order 10 cancel


def test_gradient_statistics_are_rms_of_training_gradients(model):
    train = torch.randint(0, V, (21, 3), generator=torch.Generator().manual_seed(1))
    stats = gradient_statistics(model, train, 5, max_batches=2)
    assert stats.batches == 2
    params = list(model.parameters())
    hidden, sq = model.init_hidden(3), [torch.zeros_like(p) for p in params]
    for i in (0, 5):
        x, y = get_batch(train, i, 5)
        out = model(x, [(h.detach(), c.detach()) for h, c in hidden])
        grads = torch.autograd.grad(F.cross_entropy(out.logits.flatten(0, 1), y.flatten()), params)
        sq = [s + g * g for s, g in zip(sq, grads)]
        hidden = out.hidden
    ms = [(s / 2).sqrt() for s in sq]
    mean = sum(m.mean() for m in ms) / len(ms)
    for got, want, rate in zip(stats.ms, ms, stats.rates):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(rate, want / mean)


@pytest.mark.parametrize("rows,batches", [(22, 4), (23, 5), (21, 4)])
def test_gradient_statistics_walk_as_dynamiceval_py(model, rows, batches):
    """gradstat's ``while i < L - 2``: segments start at 0, 5, ... below L - 2, so (L - 2) % 5
    == 0 adds no one-row segment at L - 2."""
    train = torch.randint(0, V, (rows, 2), generator=torch.Generator().manual_seed(1))
    assert gradient_statistics(model, train, 5).batches == batches


def test_unset_settings_are_derived_as_oldhyper(model, stats):
    """dynamiceval.py --oldhyper from Krause et al.'s lr 0.002, lambda 0.02, epsilon 0.001:
    lambda / (parameter tensors), lr and epsilon / sqrt(statistics batches)."""
    n = len(list(model.parameters()))
    got = DynamicSettings().resolved(stats)
    assert stats.batches == 12 and len(stats.ms) == n
    assert got.lr == pytest.approx(0.002 / 12 ** 0.5) and got.epsilon == pytest.approx(0.001 / 12 ** 0.5)
    assert got.decay == pytest.approx(0.02 / n)
    assert DynamicSettings(lr=1e-4).resolved(stats).lr == 1e-4  # a given value stays
    assert DynamicSettings(rule="sgd", lr=0.1).resolved(None).decay == 0.0
    with pytest.raises(ValueError):
        DynamicSettings(rule="sgd").resolved(None)


@pytest.mark.parametrize("bad", [dict(rule="adam"), dict(lr=-1.0), dict(decay=2.0), dict(epsilon=0.0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DynamicSettings(**bad)
