"""``rnnlm train`` end to end through the console script."""

import math

import pytest
from helpers import read_rows, run_rnnlm

from rnnlm.results import METRICS_COLUMNS, RESULT_COLUMNS

pytestmark = pytest.mark.usefixtures("shared_data")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_rnnlm("train", "experiment=smoke", "trainer.progress=false", "hydra.run.dir=run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


def test_smoke_writes_both_csvs_with_documented_columns(smoke_run):
    metrics = read_rows(smoke_run / "metrics.csv")
    assert list(metrics[0]) == list(METRICS_COLUMNS)
    assert [int(r["epoch"]) for r in metrics] == [1, 2]
    for row in metrics:
        assert math.isclose(float(row["val_ppl"]), math.exp(float(row["val_loss"])), rel_tol=1e-9)
        assert float(row["tokens_per_second"]) > 0
    (result,) = read_rows(smoke_run / "result.csv")
    assert list(result) == list(RESULT_COLUMNS)
    assert result["status"] == "completed"
    assert int(result["vocab_size"]) == 10_000 and int(result["train_tokens"]) == 929_589
    test_ppl = float(result["test_ppl"])
    assert math.isfinite(test_ppl) and test_ppl < 2_000  # well below the vocabulary size
    assert float(result["best_val_ppl"]) == min(float(r["val_ppl"]) for r in metrics)
    assert result["dropout.recurrent.kind"] == "weight_drop" and result["dropout.embedding"] == "0.1"
    assert result["overrides"] == "experiment=smoke trainer.progress=false"


def test_smoke_leaves_hydra_config_and_plain_tensor_checkpoints(smoke_run):
    import torch

    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    best = torch.load(smoke_run / "checkpoints" / "best.pt", weights_only=True)
    assert "encoder.weight" in best["model"]
    last = torch.load(smoke_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 3


def test_help_lists_config_groups(tmp_path):
    proc = run_rnnlm("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("dataset: ptb, wikitext2", "experiment:", "dropout:", "optim:", "trainer:", "model:"):
        assert group in proc.stdout
    assert "awd_lstm_wt2" in proc.stdout and "smoke" in proc.stdout


def test_overrides_compose_for_every_public_key(tmp_path):
    proc = run_rnnlm(
        "train", "dataset=wikitext2", "dropout.output=0.3", "trainer.max_epochs=3", "device=cpu", "seed=7",
        "dropout.locked=false", "dropout.recurrent.kind=weight_drop", "dropout.recurrent.mask=element",
        "optim.lr=20", "trainer.bptt=50", "trainer.max_minutes=5", "trainer.alpha=0", "trainer.beta=0",
        "model.emsize=10", "model.nhid=20", "model.nlayers=2", "model.tie_weights=false",
        "dataset.batch_size=4", "--cfg", "job", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: wikitext2" in proc.stdout and "output: 0.3" in proc.stdout and "seed: 7" in proc.stdout


def test_awd_wt2_recipe(tmp_path):
    proc = run_rnnlm("train", "experiment=awd_lstm_wt2", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("name: wikitext2", "batch_size: 80", "input: 0.65", "hidden: 0.2", "seed: 1882", "max_epochs: 750"):
        assert line in out
