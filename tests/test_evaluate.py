"""Evaluation maths: per-token loss with carried state, MC-dropout averaging (Gal's protocol)."""

import math

import torch
import torch.nn.functional as F
from helpers import tiny_lm

from rnnlm.config import DropoutConfig, RecurrentDropoutConfig
from rnnlm.dropout import EmbeddingDropout, mc_pass
from rnnlm.data import batchify
from rnnlm.model import AWDLSTM
from rnnlm.training import evaluate, evaluate_mc, perplexity


def model_with(dropout: DropoutConfig) -> AWDLSTM:
    return tiny_lm(30, nhid=12, dropout=dropout)


def test_evaluate_is_the_per_token_loss_of_one_long_pass():
    model = model_with(DropoutConfig()).eval()
    data = batchify(torch.randint(0, 30, (301,)), 3)  # (100, 3)
    out = model(data[:-1], model.init_hidden(3))  # the whole stream at once
    expected = F.cross_entropy(out.logits.flatten(0, 1), data[1:].flatten()).item()
    assert math.isclose(evaluate(model, data, bptt=7), expected, rel_tol=1e-5)  # segments carry state


def test_mc_equals_standard_without_dropout_and_masks_go_back_off():
    none = DropoutConfig(0.0, 0.0, 0.0, 0.0, True, RecurrentDropoutConfig("none", 0.0))
    model = model_with(none)
    data = batchify(torch.randint(0, 30, (200,)), 4)
    assert math.isclose(evaluate_mc(model, data, 10, samples=3, columns=2), evaluate(model, data, 10), rel_tol=1e-5)


def test_mc_averages_probabilities_not_losses():
    model = model_with(DropoutConfig(0.3, 0.3, 0.3, 0.3))
    data = batchify(torch.randint(0, 30, (200,)), 4)
    mc = evaluate_mc(model, data, 10, samples=4, columns=2, seed=1)
    assert math.isfinite(mc) and mc != evaluate(model, data, 10)
    assert not any(getattr(m, "mc", False) for m in model.modules())  # switched off again
    a, b = evaluate(model, data, 10), evaluate(model, data, 10)
    assert a == b  # eval deterministic afterwards


GAL_UNTIED = DropoutConfig(0.2, 0.5, 0.5, 0.5, True, RecurrentDropoutConfig(
    "variational", 0.2, "untied", per_gate_input=True))


def test_mc_of_a_model_with_only_word_dropout_is_the_deterministic_loss():
    """Gal's MC test turns word dropout off: a model whose only dropout is word dropout
    gives the deterministic figure; with word dropout kept on, it does not."""
    none = RecurrentDropoutConfig("none", 0.0)
    model = model_with(DropoutConfig(0.5, 0.0, 0.0, 0.0, True, none))
    data = batchify(torch.randint(0, 30, (200,)), 4)
    assert math.isclose(evaluate_mc(model, data, 10, samples=3, columns=2), evaluate(model, data, 10), rel_tol=1e-6)
    assert evaluate_mc(model, data, 10, samples=3, columns=3, word_dropout=True) != evaluate(model, data, 10)


def test_mc_loss_is_minus_log_mean_probability_over_passes_of_fixed_masks():
    """By hand: K passes, each one forward over the whole stream under one mask set,
    then -mean_n log((1/K) sum_k p_k(target_n)). evaluate_mc reads the stream in BPTT
    segments; with masks held for the pass the segments change nothing."""
    model = model_with(GAL_UNTIED).eval()
    data = batchify(torch.randint(0, 30, (241,)), 3)  # (80, 3)
    K, seed = 5, 11
    probs = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(K):
            with mc_pass(model, skip=(EmbeddingDropout,)):
                out = model(data[:-1], model.init_hidden(3))
            probs.append(out.logits.softmax(-1).gather(-1, data[1:].unsqueeze(-1)).squeeze(-1))
    by_hand = -torch.stack(probs).mean(0).log().mean().item()
    assert math.isclose(evaluate_mc(model, data, 7, samples=K, columns=1, seed=seed), by_hand, rel_tol=1e-5)
    # and it is not the mean of the per-pass losses (Jensen)
    mean_loss = -torch.stack(probs).log().mean().item()
    assert by_hand < mean_loss


def test_mc_counts_samples_per_token_over_columns_and_passes():
    """Gal's run_MC_test: the stream copied into columns read side by side, each copy with its
    own masks, passes repeated until every token has S predictions. S = 5 with 2 columns is
    passes of 2, 2 and 1 copies; by hand, each pass one forward over the copied stream."""
    model = model_with(GAL_UNTIED).eval()
    data = batchify(torch.randint(0, 30, (241,)), 3)  # (80, 3)
    S, C, seed = 5, 2, 7
    probs = []  # one (79, 3) tensor per sample
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for c in (2, 2, 1):
            copies = data.repeat(1, c)  # (80, 3c)
            with mc_pass(model, skip=(EmbeddingDropout,)):
                out = model(copies[:-1], model.init_hidden(3 * c))
            p = out.logits.softmax(-1).gather(-1, copies[1:].unsqueeze(-1)).squeeze(-1)  # (79, 3c)
            probs += list(p.view(79, c, 3).unbind(1))
    assert len(probs) == S
    assert not torch.allclose(probs[0], probs[1])  # the copies of one pass have their own masks
    by_hand = -torch.stack(probs).mean(0).log().mean().item()
    assert math.isclose(evaluate_mc(model, data, 9, samples=S, columns=C, seed=seed), by_hand, rel_tol=1e-5)


def test_mc_masks_are_fixed_per_pass_not_per_segment():
    model = model_with(GAL_UNTIED)
    data = batchify(torch.randint(0, 30, (241,)), 3)
    one_segment = evaluate_mc(model, data, 1000, samples=3, columns=2, seed=2)
    assert math.isclose(evaluate_mc(model, data, 5, samples=3, columns=2, seed=2), one_segment, rel_tol=1e-5)


def test_mc_is_reproducible_by_seed_and_leaves_the_global_rng_alone():
    model = model_with(GAL_UNTIED)
    data = batchify(torch.randint(0, 30, (200,)), 4)
    torch.manual_seed(0)
    before = torch.rand(2)
    torch.manual_seed(0)
    a = evaluate_mc(model, data, 10, samples=2, columns=2, seed=4)
    assert torch.equal(torch.rand(2), before)
    assert a == evaluate_mc(model, data, 10, samples=2, columns=2, seed=4)
    assert a != evaluate_mc(model, data, 10, samples=2, columns=2, seed=5)


def test_perplexity_does_not_overflow():
    assert perplexity(0.0) == 1.0 and math.isclose(perplexity(math.log(80.0)), 80.0)
    assert perplexity(1e6) == math.inf
