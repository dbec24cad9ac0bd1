"""Every dropout preset trains on the smoke experiment; MC-dropout evaluation."""

import math

import pytest
from hydra import compose, initialize_config_module

from rnnlm.cli.train import to_run_config
from rnnlm.results import read_csv
from rnnlm.run import train

pytestmark = pytest.mark.usefixtures("shared_data")

PRESETS = ["awd", "none", "zaremba", "gal_tied", "gal_untied", "weight_drop_row", "weight_drop_column",
           "semeniuta", "zoneout"]
QUICK = ["experiment=smoke", "trainer.max_epochs=1", "trainer.max_batches=3", "trainer.progress=false"]


@pytest.fixture(autouse=True)
def local_data(monkeypatch, tmp_path_factory):
    from conftest import SHARED_DATA

    monkeypatch.setenv("RNNLM_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "corpus-cache"))


def run_config(*overrides):
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        return to_run_config(compose("config", overrides=[*QUICK, *overrides]))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_dropout_preset_trains_to_a_finite_perplexity(preset, tmp_path):
    cfg = run_config(f"dropout={preset}")
    result = train(cfg, tmp_path)
    assert result["status"] == "completed"
    assert math.isfinite(result["test_ppl"]) and result["test_ppl"] < 10_000
    (row,) = read_csv(tmp_path / "result.csv")
    assert row["dropout.recurrent.kind"] == cfg.dropout.recurrent.kind.value
    assert row["dropout.recurrent.mask"] == cfg.dropout.recurrent.mask.value


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
