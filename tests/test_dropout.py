"""Invariants of the AWD dropouts (Merity et al. 2017): embedding, locked/per-step, WeightDrop."""

import warnings

import pytest
import torch
from torch import nn

from rnnlm.dropout import EmbeddingDropout, SequenceDropout, WeightDropLSTM, mc_pass

P = 0.5


# ---------------------------------------------------------------- embedding dropout
def test_embedding_dropout_zeroes_whole_word_types_consistently():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8)
    drop = EmbeddingDropout(emb, P).train()
    tokens = torch.randint(0, 50, (30, 6))
    out = drop(tokens)  # (T, B, D)
    ratio = out / emb(tokens)
    # every element of a looked-up row shares one factor in {0, 1/(1-p)}
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio))
    factors = ratio[..., 0]
    assert set(torch.unique(factors).tolist()) <= {0.0, 1 / (1 - P)}
    # the same word type gets the same factor wherever it occurs in the minibatch
    for word in tokens.unique():
        assert torch.unique(factors[tokens == word]).numel() == 1
    assert (factors == 0).any() and (factors > 0).any()


def test_embedding_dropout_identity_at_p0_and_in_eval_and_gradient_reaches_weight():
    emb = nn.Embedding(20, 4)
    tokens = torch.randint(0, 20, (5, 3))
    assert torch.equal(EmbeddingDropout(emb, 0.0).train()(tokens), emb(tokens))
    drop = EmbeddingDropout(emb, P).eval()
    assert torch.equal(drop(tokens), emb(tokens))
    drop.train()(tokens).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


def test_embedding_dropout_resampled_each_forward():
    torch.manual_seed(1)
    emb = nn.Embedding(100, 4)
    drop = EmbeddingDropout(emb, P).train()
    tokens = torch.arange(100).view(20, 5)
    assert not torch.equal(drop(tokens), drop(tokens))


def test_per_sequence_word_dropout_ties_a_word_within_its_sequence_only():
    """Gal's LM code (sample_noise): a word's mask is shared by its occurrences in one
    sequence (column) of the segment and drawn independently for each sequence."""
    torch.manual_seed(0)
    emb = nn.Embedding(6, 4)
    drop = EmbeddingDropout(emb, P, mask="sequence").train()
    tokens = torch.randint(0, 6, (40, 32))  # every word occurs many times in every column
    ratio = drop(tokens) / emb(tokens)
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio))  # whole rows
    factors = ratio[..., 0]  # (T, B)
    assert set(torch.unique(factors).tolist()) <= {0.0, 1 / (1 - P)}
    per_column = torch.full((32, 6), -1.0)  # the factor of word w in column b
    for b in range(32):
        for word in range(6):
            values = torch.unique(factors[tokens[:, b] == word, b])
            assert values.numel() == 1  # tied within the sequence
            per_column[b, word] = values
    for word in range(6):  # and not across sequences: both factors occur among the 32 columns
        assert set(per_column[:, word].tolist()) == {0.0, 1 / (1 - P)}
    assert not torch.equal(drop(tokens), drop(tokens))  # redrawn each forward
    drop.eval()
    assert torch.equal(drop(tokens), emb(tokens))


def test_per_sequence_word_dropout_keeps_rate_and_gradient():
    torch.manual_seed(2)
    emb = nn.Embedding(500, 3)
    drop = EmbeddingDropout(emb, 0.3, mask="sequence").train()
    tokens = torch.arange(500).repeat(2, 40)  # (2, 20000): every (column, word) pair ...
    factors = (drop(tokens) / emb(tokens))[..., 0]
    assert torch.equal(factors[0], factors[1])  # ... twice in its column, tied
    assert abs((factors[0] == 0).float().mean().item() - 0.3) < 0.02  # dropped with probability p
    drop(tokens).sum().backward()
    assert emb.weight.grad.abs().sum() > 0


def test_per_token_word_dropout_decides_each_position_independently():
    """Gal's LM code before its fix (BayesianRNN main_new_dropout_SOTA_v3.lua, readme
    "Update 4"): one Bernoulli per (step, sequence), never tied over a word's occurrences."""
    torch.manual_seed(0)
    emb = nn.Embedding(3, 4)
    drop = EmbeddingDropout(emb, P, mask="token").train()
    tokens = torch.zeros(40, 8, dtype=torch.long)  # one word at every position of every sequence
    ratio = drop(tokens) / emb(tokens)
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio))  # whole rows
    factors = ratio[..., 0]  # (T, B)
    assert set(torch.unique(factors).tolist()) == {0.0, 1 / (1 - P)}
    # the same word, in one sequence, kept at one position and dropped at another: in every column
    for b in range(8):
        assert set(factors[:, b].tolist()) == {0.0, 1 / (1 - P)}
    assert not torch.equal(drop(tokens), drop(tokens))  # redrawn each forward
    drop.eval()
    assert torch.equal(drop(tokens), emb(tokens))
    with mc_pass(drop):  # a position's mask is not held over the pass's forwards
        assert not torch.equal(drop(tokens), drop(tokens))


def test_per_token_word_dropout_expectation_is_the_lookup_and_gradient_flows():
    torch.manual_seed(3)
    emb = nn.Embedding(7, 5)
    drop = EmbeddingDropout(emb, 0.3, mask="token").train()
    tokens = torch.randint(0, 7, (200, 100))
    out = drop(tokens)
    factors = (out / emb(tokens))[..., 0]
    assert abs((factors == 0).float().mean().item() - 0.3) < 0.01  # dropped with probability p
    assert abs(factors.mean().item() - 1.0) < 0.02  # inverted scaling: E[mask] = 1
    # averaged over draws, every token position's factor approaches 1: the output's mean is the lookup
    with torch.no_grad():
        mean = sum(drop(tokens[:2]) / emb(tokens[:2]) for _ in range(4000))[..., 0] / 4000  # (2, 100)
    assert (mean - 1).abs().max().item() < 0.06
    drop(tokens).sum().backward()
    assert emb.weight.grad.abs().sum() > 0


def test_per_token_word_dropout_draws_from_the_module_generator():
    """The mask comes from the module's stream (the run's dropout stream), not torch's global one."""
    emb = nn.Embedding(10, 4)
    tokens = torch.randint(0, 10, (6, 3))
    outs = []
    for global_seed in (0, 1):
        drop = EmbeddingDropout(emb, P, mask="token").train()
        drop.generator = torch.Generator().manual_seed(7)
        torch.manual_seed(global_seed)
        outs.append(drop(tokens))
    assert torch.equal(*outs)


@pytest.mark.parametrize("bad", ["tokens", "word", ""])
def test_word_mask_rejects_unknown_forms(bad):
    from rnnlm.config import ConfigError, DropoutConfig

    with pytest.raises(ConfigError, match=rf"^dropout.embedding_mask={bad} is not one of batch, sequence, token;"):
        DropoutConfig(embedding_mask=bad)
    with pytest.raises(ValueError, match="is not one of batch, sequence, token"):
        EmbeddingDropout(nn.Embedding(3, 2), P, mask=bad)
    assert DropoutConfig(embedding_mask="token").embedding_mask.value == "token"


# ---------------------------------------------------------- locked vs per-step dropout
def test_locked_mask_constant_over_time_different_across_batch():
    torch.manual_seed(0)
    x = torch.ones(12, 8, 16)  # (T, B, H)
    out = SequenceDropout(P, locked=True).train()(x)
    assert set(torch.unique(out).tolist()) <= {0.0, 1 / (1 - P)}
    assert torch.equal(out, out[:1].expand_as(out))  # same mask at every step
    assert not all(torch.equal(out[0, 0], out[0, b]) for b in range(1, 8))  # differs over batch


def test_per_step_mask_changes_over_time():
    torch.manual_seed(0)
    out = SequenceDropout(P, locked=False).train()(torch.ones(12, 8, 16))
    assert set(torch.unique(out).tolist()) <= {0.0, 1 / (1 - P)}
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("locked", [True, False])
def test_sequence_dropout_identity_at_p0_eval_and_mc(locked):
    x = torch.randn(4, 3, 5)
    assert torch.equal(SequenceDropout(0.0, locked).train()(x), x)
    drop = SequenceDropout(P, locked).eval()
    assert torch.equal(drop(x), x) and torch.equal(drop(x), drop(x))
    with mc_pass(drop):
        assert not torch.equal(drop(x), x)  # MC evaluation keeps masks on in eval
    assert torch.equal(drop(x), x)


def test_sequence_dropout_preserves_expectation():
    torch.manual_seed(0)
    out = SequenceDropout(0.3, locked=True).train()(torch.ones(1, 4000, 50))
    assert abs(out.mean().item() - 1.0) < 0.01


# ------------------------------------------------------------------------ WeightDrop
def make_weight_drop(mask="element", p=P, seed=0):
    torch.manual_seed(seed)
    return WeightDropLSTM(6, 5, p, mask=mask)


@pytest.mark.parametrize("mask", ["element", "row", "column", "gate_column"])
def test_weight_drop_t0_unchanged_later_steps_changed(mask):
    wd = make_weight_drop(mask).train()
    x = torch.randn(7, 3, 6)
    reference, _ = wd.lstm(x)  # the raw LSTM
    torch.manual_seed(3)
    dropped, _ = wd(x)
    # with h_0 = 0 the recurrent weight does not act at t = 0
    assert torch.allclose(dropped[0], reference[0], atol=1e-6)
    assert not torch.allclose(dropped[1:], reference[1:], atol=1e-4)


@pytest.mark.parametrize("mask", ["element", "row", "column", "gate_column"])
def test_weight_drop_gradient_reaches_raw_weight_which_stays_untouched(mask):
    wd = make_weight_drop(mask).train()
    before = wd.lstm.weight_hh_l0.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings at all
        out, _ = wd(torch.randn(5, 2, 6))
        out.sum().backward()
    assert torch.equal(wd.lstm.weight_hh_l0.detach(), before)
    grad = wd.lstm.weight_hh_l0.grad
    assert grad is not None and grad.abs().sum() > 0
    assert isinstance(wd.lstm.weight_hh_l0, nn.Parameter)


@pytest.mark.parametrize("mask", ["element", "row", "column", "gate_column"])
def test_weight_drop_eval_is_deterministic_and_mask_free(mask):
    wd = make_weight_drop(mask).eval()
    x = torch.randn(5, 2, 6)
    a, _ = wd(x)
    b, _ = wd(x)
    ref, _ = wd.lstm(x)
    assert torch.equal(a, b) and torch.equal(a, ref)  # row masks too (awd-lstm-lm keeps them on)


@pytest.mark.parametrize(
    "mask,shape", [("element", (4, 5, 5)), ("row", (4, 5, 1)), ("column", (1, 1, 5)), ("gate_column", (4, 1, 5))]
)
def test_weight_drop_mask_shapes_and_values(mask, shape):
    m = make_weight_drop(mask).sample_mask()
    assert m.shape == shape
    assert set(torch.unique(m).tolist()) <= {0.0, 1 / (1 - P)}


def test_weight_drop_mask_semantics_on_dropped_weight():
    """Row zeroes whole gate rows; column zeroes unit j in every gate; gate-column per gate."""
    wd = make_weight_drop("row")
    H = 5
    row = torch.ones(4, H, 1); row[1, 2] = 0
    w = wd.dropped_weight(row)
    assert (w[1 * H + 2] == 0).all() and (w[[i for i in range(4 * H) if i != H + 2]] != 0).all()

    col = torch.ones(1, 1, H); col[..., 3] = 0
    w = make_weight_drop("column").dropped_weight(col)
    assert (w[:, 3] == 0).all() and (w[:, [0, 1, 2, 4]] != 0).all()

    gcol = torch.ones(4, 1, H); gcol[2, 0, 1] = 0
    w = make_weight_drop("gate_column").dropped_weight(gcol)
    assert (w[2 * H:3 * H, 1] == 0).all() and (w[:2 * H, 1] != 0).all() and (w[3 * H:, 1] != 0).all()


def test_weight_drop_p0_equals_lstm_and_state_dict_round_trips():
    wd = make_weight_drop(p=0.0).train()
    x = torch.randn(5, 2, 6)
    assert torch.equal(wd(x)[0], wd.lstm(x)[0])
    other = make_weight_drop(seed=9)
    other.load_state_dict(wd.eval().state_dict())
    other.train().eval()
    assert torch.equal(other(x)[0], wd(x)[0])


@pytest.mark.parametrize("shape", [(50, 40), (4, 600, 600)])  # small: one draw; large: chunks
def test_bernoulli_mask_values_rate_and_reproducibility(shape):
    from rnnlm.dropout import bernoulli_mask

    like = torch.empty(0)
    torch.manual_seed(0)
    mask = bernoulli_mask(shape, 0.3, like)
    assert mask.shape == shape
    assert torch.allclose(mask[mask != 0], torch.tensor(1 / 0.7))  # values in {0, 1/(1-p)}
    assert abs((mask > 0).float().mean().item() - 0.7) < 0.03
    torch.manual_seed(0)
    assert torch.equal(bernoulli_mask(shape, 0.3, like), mask)  # reproducible under the seed
    assert not torch.equal(bernoulli_mask(shape, 0.3, like), mask)  # fresh draws afterwards
