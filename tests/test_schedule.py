"""NT-ASGD trigger, variable-BPTT lengths and lr scaling, AR/TAR, averaged weights —
small hand-checked cases."""

import math
import statistics

import pytest
import torch
from torch import nn

from rnnlm.training.optim import averaged_weights, make_asgd, make_sgd, shrink_weights
from rnnlm.training.regularization import activation_regularization, temporal_activation_regularization
from rnnlm.training.schedule import decays_after, nonmonotone_trigger, sample_seq_len, scaled_lr


@pytest.mark.parametrize(
    "history,val,expected",
    [
        ([5.0, 4.0, 3.0, 2.9, 2.8], 2.7, False),  # len(hist) == nonmono: never
        ([5.0, 4.0, 3.0, 2.9, 2.8, 2.7], 4.5, False),  # min(hist[:-5]) = 5.0: 4.5 is better
        ([5.0, 4.0, 3.0, 2.9, 2.8, 2.7], 5.1, True),
        ([5.0, 4.0, 3.0, 2.9, 2.8, 2.7, 2.6], 3.5, False),  # min(hist[:-5]) = 4.0 -> 3.5 better
        ([5.0, 4.0, 3.0, 2.9, 2.8, 2.7, 2.6], 4.1, True),
    ],
)
def test_nt_asgd_trigger(history, val, expected):
    # the trigger compares with the best of all but the last nonmono=5 values
    assert nonmonotone_trigger(history, val, nonmono=5) is expected


def test_scaled_lr_is_proportional_to_segment_length():
    assert scaled_lr(30.0, 70, 70) == 30.0
    assert scaled_lr(30.0, 35, 70) == 15.0
    assert math.isclose(scaled_lr(30.0, 77, 70), 33.0)


def test_variable_bptt_distribution_and_determinism():
    g = torch.Generator().manual_seed(0)
    lengths = [sample_seq_len(70, g) for _ in range(4000)]
    assert min(lengths) >= 5
    short = [n for n in lengths if n < 53]  # around 35: the halved base
    assert 0.03 < len(short) / len(lengths) < 0.07  # p = 0.05
    long = [n for n in lengths if n >= 53]
    assert abs(statistics.mean(long) - 69.5) < 0.5  # int() truncates N(70, 5)
    assert 4.5 < statistics.stdev(long) < 5.5
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [sample_seq_len(70, g1) for _ in range(50)] == [sample_seq_len(70, g2) for _ in range(50)]
    assert sample_seq_len(70, g1, variable=False) == 70


def test_sequence_length_floor_of_five():
    g = torch.Generator().manual_seed(0)
    assert min(sample_seq_len(6, g) for _ in range(500)) == 5


def test_activation_regularization_hand_computed():
    x = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]]])  # (T=2, B=1, H=2)
    # mean of squares = (1 + 4 + 9 + 0) / 4 = 3.5
    assert activation_regularization(x, 2.0).item() == pytest.approx(7.0)
    assert activation_regularization(x, 0.0).item() == 0.0


def test_temporal_activation_regularization_hand_computed():
    h = torch.tensor([[[1.0, 2.0]], [[2.0, 0.0]], [[2.0, 1.0]]])  # (T=3, B=1, H=2)
    # differences: (1, -2), (0, 1) -> squares 1, 4, 0, 1 -> mean 1.5
    assert temporal_activation_regularization(h, 1.0).item() == pytest.approx(1.5)
    assert temporal_activation_regularization(h[:1], 1.0).item() == 0.0


def test_asgd_averages_iterates_and_averaged_weights_swap_back():
    p = nn.Parameter(torch.tensor([0.0]))
    model = nn.Module()
    model.p = p
    opt = make_asgd(model, lr=1.0, weight_decay=0.0)
    iterates = []
    for g in (1.0, 2.0, 3.0):
        p.grad = torch.tensor([g])
        opt.step()
        iterates.append(p.item())
    assert iterates == [-1.0, -3.0, -6.0]
    with averaged_weights(model, opt):
        # torch (and awd-lstm-lm's) ASGD with t0=0: mu_t = 1 / max(1, t), so the average
        # restarts at step 2: ax = mean of iterates 2..t
        assert p.item() == pytest.approx((iterates[1] + iterates[2]) / 2)
    assert p.item() == -6.0


@pytest.mark.parametrize("max_epoch,first_decayed", [(4, 6), (6, 8), (14, 16), (10, 12)])
def test_step_decay_starts_where_main_lua_starts_it(max_epoch, first_decayed):
    """main.lua: after validating epoch e, lr /= decay if e > max_epoch. So the first epoch
    trained with a decayed lr is max_epoch + 2 (Zaremba small 6, large 16; Gal large 12)."""
    main_lua = [e for e in range(1, 40) if e > max_epoch]  # epochs after which main.lua decays
    ours = [e for e in range(1, 40) if decays_after(e, first_decayed)]
    assert ours == main_lua
    assert not any(decays_after(e, 0) for e in range(1, 40))  # 0 = never


def test_finetune_cap_bounds_the_length_and_leaves_others_alone():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    capped = [sample_seq_len(70, g1, cap=80) for _ in range(3000)]
    free = [sample_seq_len(70, g2) for _ in range(3000)]
    assert max(capped) == 80 and max(free) > 80
    assert [min(f, 80) for f in free] == capped


def test_weight_shrink_is_a_fixed_fraction_per_step_whatever_the_lr():
    """Gal's LM code: w <- (w - lr * g) * (1 - wd) after every step."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_sgd(model, lr=0.01, weight_decay=0.0)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    shrink_weights(model, 1e-3)
    for p, w, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), (w - 0.01 * g) * (1 - 1e-3))
