"""Every dropout preset trains on the smoke experiment (tiny corpus); MC-dropout evaluation."""

import math

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
