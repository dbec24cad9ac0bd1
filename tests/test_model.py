"""The AWD-LSTM model: sizes, tying, dropout wiring, state handling."""

import pytest
import torch
from torch import nn

from rnnlm.config import DropoutConfig, ModelConfig, RecurrentDropoutConfig
from rnnlm.dropout import WeightDropLSTM
from rnnlm.model import AWDLSTM, count_parameters, repackage_hidden


def no_dropout() -> DropoutConfig:
    return DropoutConfig(0.0, 0.0, 0.0, 0.0, True, RecurrentDropoutConfig("none", 0.0))


@pytest.mark.parametrize("vocab,expected_millions", [(10_000, 24.2), (33_278, 33.6)])
def test_awd_sizes_match_the_paper(vocab, expected_millions):
    model = AWDLSTM(vocab, ModelConfig(), DropoutConfig())
    assert round(count_parameters(model) / 1e6, 1) == expected_millions
    assert model.decoder.weight is model.encoder.weight
    assert [type(r) for r in model.rnns] == [WeightDropLSTM] * 3
    assert model.sizes == [400, 1150, 1150, 400]


def test_forward_shapes_and_untied_sizes():
    model = AWDLSTM(50, ModelConfig(emsize=8, nhid=12, nlayers=2, tie_weights=False), DropoutConfig())
    assert model.sizes == [8, 12, 12] and model.decoder.weight is not model.encoder.weight
    tokens = torch.randint(0, 50, (7, 3))
    out = model(tokens, model.init_hidden(3))
    assert out.logits.shape == (7, 3, 50)
    assert out.raw_output.shape == out.output.shape == (7, 3, 12)
    assert [h.shape for h, _ in out.hidden] == [(1, 3, 12), (1, 3, 12)]


def test_init_follows_awd():
    model = AWDLSTM(100, ModelConfig(emsize=8, nhid=12, nlayers=2), DropoutConfig())
    assert model.encoder.weight.abs().max() <= 0.1
    assert torch.equal(model.decoder.bias, torch.zeros(100))


def test_without_dropout_layers_equal_a_stacked_nn_lstm():
    """With every rate 0, the model is embedding -> nn.LSTM stack -> decoder."""
    torch.manual_seed(0)
    model = AWDLSTM(30, ModelConfig(emsize=6, nhid=6, nlayers=2, tie_weights=True), no_dropout()).train()
    stacked = nn.LSTM(6, 6, num_layers=2)
    with torch.no_grad():
        for l, rnn in enumerate(model.rnns):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(stacked, f"{name}_l{l}").copy_(getattr(rnn, f"{name}_l0"))
    tokens = torch.randint(0, 30, (9, 4))
    expected, _ = stacked(model.encoder(tokens))
    out = model(tokens, model.init_hidden(4))
    assert torch.allclose(out.logits, model.decoder(expected), atol=1e-6)


def test_eval_is_deterministic_with_all_dropouts_on():
    torch.manual_seed(0)
    cfg = DropoutConfig(0.3, 0.3, 0.3, 0.3, True, RecurrentDropoutConfig("weight_drop", 0.5, "row"))
    model = AWDLSTM(40, ModelConfig(emsize=8, nhid=10, nlayers=3), cfg)
    tokens = torch.randint(0, 40, (6, 2))
    model.train()
    a = model(tokens, model.init_hidden(2)).logits
    b = model(tokens, model.init_hidden(2)).logits
    assert not torch.equal(a, b)
    model.eval()
    c = model(tokens, model.init_hidden(2)).logits
    d = model(tokens, model.init_hidden(2)).logits
    assert torch.equal(c, d)


def test_state_dict_round_trips_across_train_eval_switches():
    torch.manual_seed(0)
    model = AWDLSTM(40, ModelConfig(emsize=8, nhid=10, nlayers=2), DropoutConfig())
    tokens = torch.randint(0, 40, (6, 2))
    model.train()(tokens, model.init_hidden(2))
    model.eval()
    other = AWDLSTM(40, ModelConfig(emsize=8, nhid=10, nlayers=2), DropoutConfig())
    other.load_state_dict(model.state_dict())
    other.eval()
    assert torch.equal(other(tokens, other.init_hidden(2)).logits, model(tokens, model.init_hidden(2)).logits)


def test_repackage_hidden_detaches():
    model = AWDLSTM(20, ModelConfig(emsize=4, nhid=4, nlayers=1), no_dropout())
    out = model(torch.randint(0, 20, (3, 2)), model.init_hidden(2))
    assert all(h.requires_grad for h, _ in out.hidden)
    assert not any(h.requires_grad or c.requires_grad for h, c in repackage_hidden(out.hidden))
