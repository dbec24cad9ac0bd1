"""Mask semantics of every dropout preset, at the level of the whole model.

For each preset in ``configs/dropout/`` this pins down, against the paper definitions:
which tensor each mask multiplies, its shape, when it is redrawn (each forward in
training; once per pass in MC evaluation), and that ``eval()`` is mask-free.

* Gal & Ghahramani 2016 (arXiv 1512.05287) and Gal's LM code: masks per sequence,
  constant over time; untied = a mask per gate on x_t and on h_{t-1}; MC evaluation
  without word dropout and with one mask set per pass.
* Zaremba et al. 2014 (arXiv 1409.2329): a fresh mask per time step, non-recurrent only.
* Merity et al. 2017 (arXiv 1708.02182): word-type embedding dropout, locked dropout,
  WeightDrop on W_hh.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from rnnlm.cli.train import to_run_config
from rnnlm.dropout import EmbeddingDropout, SequenceDropout, StepLSTM, StochasticModule, WeightDropLSTM, mc_pass
from rnnlm.model import AWDLSTM


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "dropout").glob("*.yaml"))
V, T, B = 40, 9, 6


pytestmark = pytest.mark.usefixtures("one_thread")


def preset_model(preset: str) -> AWDLSTM:
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        cfg = to_run_config(compose("config", overrides=[
            f"dropout={preset}", "model=tiny", "model.emsize=12", "model.nhid=14"]))
    torch.manual_seed(0)
    return AWDLSTM(V, cfg.model, cfg.dropout), cfg.dropout


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(seed))


def logits(model: AWDLSTM, x: torch.Tensor) -> torch.Tensor:
    return model(x, model.init_hidden(x.size(1))).logits


def held_masks(model: AWDLSTM) -> dict[str, tuple[int, ...]]:
    """Inside one MC pass of Gal's protocol (no word dropout): every mask drawn once and
    held, by module and key, with its shape."""
    x = tokens()
    with mc_pass(model, skip=(EmbeddingDropout,)):
        logits(model, x)
        return {f"{name}.{key}": tuple(m.shape) for name, module in model.named_modules()
                if isinstance(module, StochasticModule) and module._held
                for key, m in module._held.items()}


def test_presets_are_found():
    assert {"awd", "gal_tied", "gal_untied", "zaremba", "none"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_eval_is_mask_free_and_training_redraws_each_forward(preset):
    model, d = preset_model(preset)
    x = tokens()
    model.eval()
    assert torch.equal(logits(model, x), logits(model, x))
    model.train()
    any_dropout = any([d.embedding, d.input, d.hidden, d.output, d.recurrent.rate, d.recurrent.cell_rate])
    assert (not torch.equal(logits(model, x), logits(model, x))) == bool(any_dropout)


@pytest.mark.parametrize("preset", PRESETS)
def test_held_masks_have_the_paper_shapes(preset):
    """Which tensors carry a per-sequence (or per-minibatch) mask in a pass, and their shapes."""
    model, d = preset_model(preset)
    E, H = 12, 14
    held = held_masks(model)
    expected: dict[str, tuple[int, ...]] = {}
    # word dropout is not part of Gal's MC protocol: never held in a pass by default
    r = d.recurrent
    if d.locked:
        gal_inside = r.per_gate_input
        if d.input and not gal_inside:
            expected["input_dropout.mask"] = (1, B, E)
        if d.hidden and not gal_inside:
            expected["hidden_dropout.mask"] = (1, B, H)
        if d.output:
            expected["output_dropout.mask"] = (1, B, E)
    sizes = model.sizes
    for layer in range(len(model.rnns)):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        if r.kind == "weight_drop" and r.rate:
            expected[f"rnns.{layer}.mask"] = {
                "element": (4, n_out, n_out), "row": (4, n_out, 1), "column": (1, 1, n_out),
                "gate_column": (4, 1, n_out)}[r.mask]
        if r.kind == "variational":
            expected[f"rnns.{layer}.h"] = (B, n_out) if r.mask == "tied" else (4, B, n_out)
            if r.per_gate_input:
                expected[f"rnns.{layer}.x"] = (4, B, n_in)
        if r.kind == "semeniuta" and r.mask == "sequence":
            expected[f"rnns.{layer}.g"] = (B, n_out)
    assert held == expected


def test_gal_untied_is_per_gate_on_both_inputs_at_the_tied_rates():
    """Gal's LM code: noise_i (B, 4H) and noise_h (B, 4H) per layer, split by gate; the
    layer input rate is dropout.input for layer 1 and dropout.hidden above; no shared
    locked mask on the layer inputs; embedding = recurrent and input = output rates."""
    model, d = preset_model("gal_untied")
    assert d.recurrent.per_gate_input and d.recurrent.mask == "untied"
    assert d.embedding == d.recurrent.rate and d.input == d.output
    assert model.input_dropout.p == 0 and model.hidden_dropout.p == 0
    assert [rnn.scheme.input_rate for rnn in model.rnns] == [d.input] + [d.hidden] * (len(model.rnns) - 1)
    layer = model.rnns[0]
    masks = layer.train().sample_masks(T, B)
    assert masks["x"].shape == (4, B, layer.input_size) and masks["h"].shape == (4, B, layer.hidden_size)
    assert all(not torch.equal(masks["x"][a], masks["x"][b]) for a in range(4) for b in range(a + 1, 4))
    values = masks["x"].unique()
    assert torch.allclose(values, torch.tensor([0.0, 1 / (1 - d.input)]))


def test_gal_untied_input_masks_act_gate_by_gate():
    """Gate k sees x_t * m_k: zeroing the mask of one gate changes only that gate's input."""
    torch.manual_seed(0)
    layer = StepLSTM(5, 7, "variational", 0.3, "untied", input_rate=0.4).train()
    x = torch.randn(T, B, 5)
    masks = layer.sample_masks(T, B)
    ones_h = torch.ones(4, B, 7)
    all_on = {**masks, "x": torch.ones(4, B, 5), "h": ones_h}
    plain = torch.nn.LSTM(5, 7)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, masks=all_on)[0], plain(x)[0])  # all-keep = nn.LSTM
    cut_input_gate = torch.ones(4, B, 5)
    cut_input_gate[0] = 0.0  # gate i sees no input at all
    out = layer(x, masks={**all_on, "x": cut_input_gate})[0]
    w = layer.weight_ih_l0.detach().clone()
    w[:7] = 0.0  # the same as a zero input weight for gate i only
    plain.weight_ih_l0.data.copy_(w)
    torch.testing.assert_close(out, plain(x)[0])


def test_word_dropout_is_off_in_mc_unless_asked():
    model, _ = preset_model("gal_untied")
    model.eval()
    emb = model.embedding_dropout
    with mc_pass(model, skip=(EmbeddingDropout,)):
        assert not emb.stochastic
    with mc_pass(model):
        assert emb.stochastic
    assert not emb.stochastic


@pytest.mark.parametrize("preset", ["gal_untied", "awd", "weight_drop_row", "semeniuta"])
def test_mc_pass_holds_masks_across_segments(preset):
    """One pass = one mask set: two segments in a pass equal the stream in one forward."""
    model, _ = preset_model(preset)
    model.eval()
    x = tokens()
    torch.manual_seed(3)
    with mc_pass(model, skip=(EmbeddingDropout,)):
        whole = logits(model, x)
    torch.manual_seed(3)
    with mc_pass(model, skip=(EmbeddingDropout,)):
        first = model(x[:4], model.init_hidden(B))
        second = model(x[4:], first.hidden)
    torch.testing.assert_close(torch.cat([first.logits, second.logits]), whole)
    assert not torch.equal(whole, logits(model, x))  # masks were on in the pass


def test_per_step_masks_stay_per_step_in_mc():
    """Zaremba's standard dropout has no per-sequence mask to hold: a fresh one each step."""
    drop = SequenceDropout(0.5, locked=False).eval()
    x = torch.ones(T, B, 8)
    with mc_pass(drop):
        out = drop(x)
        assert not torch.equal(out[0], out[1]) and drop._held == {}


def test_weight_drop_mask_is_on_w_hh_only():
    layer = WeightDropLSTM(5, 6, 0.5, mask="column").train()
    mask = layer.sample_mask()
    dropped = layer.dropped_weight(mask).view(4, 6, 6)
    raw = layer.lstm.weight_hh_l0.view(4, 6, 6)
    cols = mask.view(6) == 0
    assert torch.all(dropped[:, :, cols] == 0)
    torch.testing.assert_close(dropped[:, :, ~cols], raw[:, :, ~cols] * 2)
    assert isinstance(layer.lstm.weight_hh_l0, torch.nn.Parameter)  # the raw weight is untouched
