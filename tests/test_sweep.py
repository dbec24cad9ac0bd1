"""Sweeps through the console script, summarised by ``rnnlm summary``."""

import statistics

import pytest
from helpers import read_rows, run_rnnlm

pytestmark = pytest.mark.usefixtures("shared_data")

# One short epoch of the smoke model per job.
QUICK = ("experiment=smoke", "trainer.max_epochs=1", "trainer.max_batches=5", "trainer.progress=false")


def job_results(sweep_dir):
    return [read_rows(p)[0] for p in sorted(sweep_dir.glob("*/result.csv"))]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 sweep: two output-dropout rates x two seeds."""
    cwd = tmp_path_factory.mktemp("grid")
    proc = run_rnnlm("train", "-m", *QUICK, "dropout.output=0.1,0.3", "seed=1,2", "hydra.sweep.dir=sweep", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "sweep"


def test_each_job_writes_its_own_csvs(grid):
    results = job_results(grid)
    assert len(results) == 4 and {r["status"] for r in results} == {"completed"}
    assert {(r["dropout.output"], r["seed"]) for r in results} == {("0.1", "1"), ("0.1", "2"), ("0.3", "1"), ("0.3", "2")}
    assert all(len(read_rows(grid / str(i) / "metrics.csv")) == 1 for i in range(4))


def test_summary_means_equal_the_runs_own_results(grid, tmp_path):
    proc = run_rnnlm("summary", str(grid), "--format", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = {row["dropout.output"]: row for row in read_rows(grid / "summary.csv")}
    assert set(summary) == {"0.1", "0.3"}
    for rate, row in summary.items():
        runs = [r for r in job_results(grid) if r["dropout.output"] == rate]
        val = [float(r["best_val_ppl"]) for r in runs]
        test = [float(r["test_ppl"]) for r in runs]
        assert row["n"] == "2"
        assert float(row["val_ppl_mean"]) == pytest.approx(statistics.mean(val))
        assert float(row["val_ppl_std"]) == pytest.approx(statistics.stdev(val))
        assert float(row["test_ppl_mean"]) == pytest.approx(statistics.mean(test))
        assert float(row["test_ppl_std"]) == pytest.approx(statistics.stdev(test))
    assert (grid / "summary.md").is_file()


@pytest.mark.parametrize("fmt,marker", [("markdown", "|"), ("latex", "\\begin{tabular}"), ("csv", "val_ppl_mean")])
def test_summary_formats(grid, tmp_path, fmt, marker):
    proc = run_rnnlm("summary", str(grid), "--format", fmt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout and "dropout.output" in proc.stdout


def test_summary_plots_are_written(grid, tmp_path):
    proc = run_rnnlm("summary", str(grid), "--plot", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pngs = list(grid.glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 10_000 for p in pngs)


def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    proc = run_rnnlm(
        "train", "-m", *QUICK, "optim.clip=0", "optim.lr=20,1e12", "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    statuses = sorted(r["status"] for r in job_results(tmp_path / "sweep"))
    assert statuses == ["completed", "diverged"], proc.stderr[-2000:]
    proc = run_rnnlm("summary", "sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "diverged" in proc.stderr  # listed, not silently dropped
    (row,) = [r for r in read_rows(tmp_path / "sweep" / "summary.csv") if r["n"] == "1"]
    assert row["optim.lr"] == "20.0" or row["optim.lr"] == "20"


def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    proc = run_rnnlm(
        "train", "-m", *QUICK, "seed=1,2", "threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweep.dir=sweep", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = job_results(tmp_path / "sweep")
    assert sorted(r["seed"] for r in results) == ["1", "2"]
    assert {r["status"] for r in results} == {"completed"}


def test_named_sweeps_compose_with_any_experiment(tmp_path):
    """`-m sweep=NAME experiment=...`: Hydra's sweeper reads the named grid (printed, not run)."""
    from hydra import compose, initialize_config_module

    from rnnlm.cli.train import expand_jobs

    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        jobs = expand_jobs(["sweep=recurrent_variants", "experiment=awd_lstm_wt2"], True, [])
        assert len(jobs) == 9 * 3
        assert ["dropout/recurrent=gal_untied", "seed=2"] == jobs[5 * 3 + 1][:2]
        cfg = compose("config", overrides=jobs[5 * 3 + 1])
        assert cfg.dropout.recurrent.kind == "variational" and cfg.dropout.recurrent.mask == "untied"
        assert cfg.dataset.name == "wikitext2" and cfg.dropout.input == 0.65  # the rest unchanged
        assert len(expand_jobs(["sweep=output_rate"], True, [])) == 6 * 3
        assert len(expand_jobs(["sweep=row_vs_column", "seed=7"], True, [])) == 4 * 4


def test_slurm_launcher_composes(tmp_path):
    """The cluster path, checked by composing the config (no SLURM here)."""
    proc = run_rnnlm(
        "train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=8",
        "--cfg", "hydra", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "SlurmLauncher" in out and "partition: gpu" in out
    assert "array_parallelism: 8" in out and "gpus_per_node: 1" in out
