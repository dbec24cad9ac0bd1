"""Sweeps on the tiny corpus, summarised by ``rnnlm summary``: basic sweeps in this process,
the joblib launcher and the Optuna sweeper through the console script."""

import itertools
import statistics
from pathlib import Path

import pytest
from helpers import config_options, read_rows, run_rnnlm
from omegaconf import OmegaConf

from rnnlm.cli import main as rnnlm_main

# One short epoch of the smoke model per job: 5 batches of 4 x 10 tokens.
QUICK = ("experiment=smoke", "dataset.batch_size=4", "trainer.bptt=10", "trainer.max_epochs=1",
         "trainer.max_batches=5", "trainer.progress=false")


def job_results(sweep_dir):
    return [read_rows(p)[0] for p in sorted(sweep_dir.glob("*/result.csv"))]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 sweep: two output-dropout rates x two seeds."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    assert rnnlm_main(["train", "-m", *QUICK, "dropout.output=0.1,0.3", "seed=1,2", f"hydra.sweep.dir={sweep}"]) == 0
    return sweep


def test_each_job_writes_its_own_csvs(grid):
    results = job_results(grid)
    assert len(results) == 4 and {r["status"] for r in results} == {"completed"}
    assert {(r["dropout.output"], r["seed"]) for r in results} == {("0.1", "1"), ("0.1", "2"), ("0.3", "1"), ("0.3", "2")}
    assert all(len(read_rows(grid / str(i) / "metrics.csv")) == 1 for i in range(4))


def test_summary_means_equal_the_runs_own_results(grid):
    assert rnnlm_main(["summary", str(grid), "--format", "csv"]) == 0
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
def test_summary_formats(grid, capsys, fmt, marker):
    assert rnnlm_main(["summary", str(grid), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert marker in out and "dropout.output" in out


def test_summary_plots_are_written(grid, capsys):
    assert rnnlm_main(["summary", str(grid), "--plot"]) == 0
    pngs = list(grid.glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 10_000 for p in pngs)


def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path, capsys):
    code = rnnlm_main(["train", "-m", *QUICK, "optim.clip=0", "optim.lr=20,1e12", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert code == 0, capsys.readouterr().err[-2000:]  # a diverged job is a result of the sweep, not a crash
    statuses = sorted(r["status"] for r in job_results(tmp_path / "sweep"))
    assert statuses == ["completed", "diverged"]
    assert rnnlm_main(["summary", str(tmp_path / "sweep")]) == 0
    assert "diverged" in capsys.readouterr().err  # listed, not silently dropped
    (row,) = [r for r in read_rows(tmp_path / "sweep" / "summary.csv") if r["n"] == "1"]
    assert row["optim.lr"] == "20.0" or row["optim.lr"] == "20"


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    proc = run_rnnlm(
        "train", "-m", *QUICK, "seed=1,2", "threads=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweep.dir=sweep", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = job_results(tmp_path / "sweep")
    assert sorted(r["seed"] for r in results) == ["1", "2"]
    assert {r["status"] for r in results} == {"completed"}


def sweep_jobs(*overrides: str) -> list[list[str]]:
    """The override list of every job of ``rnnlm train -m OVERRIDES``, as Hydra's basic sweeper
    builds them: ``hydra.sweeper.params`` of the composed config first, then the command line
    (a key given twice keeps its last value), crossed in that key order."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import rnnlm.cli.train  # noqa: F401  (registers the config schema)

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(list(overrides)) if not o.is_sweep_override()]
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        params = compose("config", overrides=fixed, return_hydra_config=True).hydra.sweeper.params or {}
    axes: dict[str, list[str]] = {}
    for o in parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides]):
        key = o.get_key_element()
        values = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*axes.values())]


def test_named_sweeps_compose_with_any_experiment():
    """`-m sweep=NAME experiment=...`: the named grid (configs/sweep/), composed with any experiment."""
    from hydra import compose, initialize_config_module

    schemes = config_options("dropout/recurrent")  # recurrent_variants: every scheme x 3 seeds
    jobs = sweep_jobs("sweep=recurrent_variants", "experiment=awd_lstm_wt2")
    assert len(jobs) == len(schemes) * 3
    assert sorted({job[0] for job in jobs}) == [f"dropout/recurrent={name}" for name in schemes]
    job = ["dropout/recurrent=gal_untied", "seed=2", "sweep=recurrent_variants", "experiment=awd_lstm_wt2"]
    assert job in jobs
    with initialize_config_module("rnnlm.configs", version_base="1.3"):
        cfg = compose("config", overrides=job)
    assert cfg.dropout.recurrent.kind == "variational" and cfg.dropout.recurrent.mask == "untied"
    assert cfg.dataset.name == "wikitext2" and cfg.dropout.input == 0.65  # the rest unchanged
    assert len(sweep_jobs("sweep=output_rate")) == 6 * 3  # range(0.0, 0.6, 0.1) x 3 seeds
    assert len(sweep_jobs("sweep=row_vs_column", "seed=7")) == 4 * 4  # masks x rates, one seed


def test_slurm_launcher_composes(capsys):
    """The cluster path, checked by composing the config (no SLURM here)."""
    assert rnnlm_main([
        "train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=8",
        "--cfg", "hydra",
    ]) == 0
    out = capsys.readouterr().out
    assert "SlurmLauncher" in out and "partition: gpu" in out
    assert "array_parallelism: 8" in out and "gpus_per_node: 1" in out


def test_a_bad_job_fails_alone_and_leaves_nothing(tmp_path, capsys):
    """Each job checks its own config before its first write: job 1 is refused with one line and
    leaves no directory; job 0 runs to the end."""
    code = rnnlm_main(["train", "-m", *QUICK, "dropout.output=0.1,1.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "dropout.output=1.5 is outside [0, 1)" in err and "Traceback" not in err
    assert err.count("rnnlm: error: ") == 1 and "rnnlm: error: job 1 " in err
    assert [r["status"] for r in job_results(tmp_path / "sweep")] == ["completed"]
    assert not (tmp_path / "sweep" / "1").exists()


def test_the_cli_uses_only_hydras_public_surface():
    import rnnlm

    package = Path(rnnlm.__file__).parent
    private = [str(p.relative_to(package)) for p in package.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert private == []


@pytest.mark.slow
def test_optuna_searches_dropout_rates_and_summary_reads_the_trials(tmp_path):
    """Another sweeper through the same task function: three Optuna trials of sweep=optuna_dropout,
    minimising the best validation perplexity that each job returns."""
    proc = run_rnnlm("train", "-m", *QUICK, "trainer.max_batches=3", "sweep=optuna_dropout",
                     "hydra.sweeper.n_trials=3", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    results = job_results(sweep)
    assert len(results) == 3 and {r["status"] for r in results} == {"completed"}
    assert len({r["dropout.output"] for r in results}) == 3  # three different points of the search space
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    winner = min(results, key=lambda r: float(r["best_val_ppl"]))
    assert best.best_value == pytest.approx(float(winner["best_val_ppl"]))
    for key, value in best.best_params.items():
        assert float(winner[key]) == pytest.approx(value)

    assert rnnlm_main(["summary", str(sweep), "--format", "csv"]) == 0
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 3 and {row["n"] for row in rows} == {"1"}
    assert sorted(float(row["val_ppl_mean"]) for row in rows) == pytest.approx(
        sorted(float(r["best_val_ppl"]) for r in results))
