"""Evaluation maths: per-token loss with carried state, MC-dropout averaging."""

import math

import torch
import torch.nn.functional as F

from rnnlm.config import DropoutConfig, ModelConfig, RecurrentDropoutConfig, RecurrentKind
from rnnlm.data import batchify
from rnnlm.model import AWDLSTM
from rnnlm.training import evaluate, evaluate_mc, perplexity


def model_with(dropout: DropoutConfig) -> AWDLSTM:
    torch.manual_seed(0)
    return AWDLSTM(30, ModelConfig(emsize=8, nhid=12, nlayers=2), dropout)


def test_evaluate_is_the_per_token_loss_of_one_long_pass():
    model = model_with(DropoutConfig()).eval()
    data = batchify(torch.randint(0, 30, (301,)), 3)  # (100, 3)
    out = model(data[:-1], model.init_hidden(3))  # the whole stream at once
    expected = F.cross_entropy(out.logits.flatten(0, 1), data[1:].flatten()).item()
    assert math.isclose(evaluate(model, data, bptt=7), expected, rel_tol=1e-5)  # segments carry state


def test_mc_equals_standard_without_dropout_and_masks_go_back_off():
    none = DropoutConfig(0.0, 0.0, 0.0, 0.0, True, RecurrentDropoutConfig(RecurrentKind.none, 0.0))
    model = model_with(none)
    data = batchify(torch.randint(0, 30, (200,)), 4)
    assert math.isclose(evaluate_mc(model, data, 10, samples=3), evaluate(model, data, 10), rel_tol=1e-5)


def test_mc_averages_probabilities_not_losses():
    model = model_with(DropoutConfig(0.3, 0.3, 0.3, 0.3))
    data = batchify(torch.randint(0, 30, (200,)), 4)
    torch.manual_seed(1)
    mc = evaluate_mc(model, data, 10, samples=4)
    assert math.isfinite(mc) and mc != evaluate(model, data, 10)
    assert not any(getattr(m, "mc", False) for m in model.modules())  # switched off again
    a, b = evaluate(model, data, 10), evaluate(model, data, 10)
    assert a == b  # eval deterministic afterwards


def test_perplexity_does_not_overflow():
    assert perplexity(0.0) == 1.0 and math.isclose(perplexity(math.log(80.0)), 80.0)
    assert perplexity(1e6) == math.inf
