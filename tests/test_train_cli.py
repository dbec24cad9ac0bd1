"""``rnnlm train`` end to end through the console script, on the tiny corpus."""

import math

import pytest
from helpers import config_options, read_rows, run_rnnlm, tiny

from rnnlm.cli import main as rnnlm_main
from rnnlm.results import METRICS_COLUMNS, RESULT_COLUMNS

# The smoke experiment (tiny model, AWD dropouts and NT-ASGD) with batches small enough for
# the tiny corpus to give ~47 steps per epoch, and a step size that suits them.
SMOKE = ("experiment=smoke", "dataset.batch_size=4", "trainer.bptt=10", "optim.lr=5", "trainer.max_epochs=4",
         "trainer.progress=false")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_rnnlm("train", *SMOKE, "hydra.run.dir=run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


def test_smoke_writes_both_csvs_with_documented_columns(smoke_run):
    metrics = read_rows(smoke_run / "metrics.csv")
    assert list(metrics[0]) == list(METRICS_COLUMNS)
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3, 4]
    for row in metrics:
        assert math.isclose(float(row["val_ppl"]), math.exp(float(row["val_loss"])), rel_tol=1e-9)
        assert float(row["tokens_per_second"]) > 0
    (result,) = read_rows(smoke_run / "result.csv")
    assert list(result) == list(RESULT_COLUMNS)
    assert result["status"] == "completed"
    corpus = tiny()
    assert int(result["vocab_size"]) == len(corpus.vocab)
    assert int(result["train_split_tokens"]) == corpus.train.numel() and int(result["test_split_tokens"]) == corpus.test.numel()
    # It learns: validation perplexity falls, and the test perplexity is far below uniform
    # guessing over the vocabulary (perplexity = vocabulary size).
    assert float(metrics[-1]["val_ppl"]) < float(metrics[0]["val_ppl"])
    test_ppl = float(result["test_ppl"])
    assert math.isfinite(test_ppl) and test_ppl < len(corpus.vocab) / 2
    assert float(result["best_val_ppl"]) == min(float(r["val_ppl"]) for r in metrics)
    assert result["dropout.recurrent.kind"] == "weight_drop" and result["dropout.embedding"] == "0.1"
    assert result["overrides"] == " ".join(SMOKE)


def test_smoke_leaves_hydra_config_and_plain_tensor_checkpoints(smoke_run):
    import torch

    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    best = torch.load(smoke_run / "checkpoints" / "best.pt", weights_only=True)
    assert "encoder.weight" in best["model"]
    last = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 5  # the next epoch to run


def test_help_lists_config_groups(capsys):
    assert rnnlm_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {', '.join(config_options('dataset'))}" in out
    for group in ("experiment:", "dropout:", "optim:", "trainer:", "model:"):
        assert group in out
    assert all(name in out for name in config_options("experiment"))


def composed_job(capsys, *overrides: str) -> str:
    """``rnnlm train OVERRIDES --cfg job`` in this process: the composed config it prints."""
    assert rnnlm_main(["train", *overrides, "--cfg", "job"]) == 0
    return capsys.readouterr().out


def test_overrides_compose_for_every_public_key(capsys):
    out = composed_job(
        capsys, "dataset=wikitext2", "dropout.output=0.3", "trainer.max_epochs=3", "device=cpu", "seed=7",
        "dropout.locked=false", "dropout.recurrent.kind=weight_drop", "dropout.recurrent.mask=element",
        "optim.lr=20", "trainer.bptt=50", "trainer.max_minutes=5", "trainer.alpha=0", "trainer.beta=0",
        "model.emsize=10", "model.nhid=20", "model.nlayers=2", "model.tie_weights=false",
        "dataset.batch_size=4",
    )
    assert "name: wikitext2" in out and "output: 0.3" in out and "seed: 7" in out


def test_awd_wt2_recipe(capsys):
    """The WikiText-2 settings of the awd-lstm-lm README: batch 80, dropouti 0.65, dropouth 0.2,
    seed 1882, 750 epochs."""
    out = composed_job(capsys, "experiment=awd_lstm_wt2")
    for line in ("name: wikitext2", "batch_size: 80", "input: 0.65", "hidden: 0.2", "seed: 1882", "max_epochs: 750"):
        assert line in out
