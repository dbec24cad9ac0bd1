"""Sweeps on the tiny corpus, summarised by ``rnnlm summary``: basic sweeps in this process,
the joblib launcher and the Optuna sweeper through the console script."""

import itertools
import statistics
from pathlib import Path

import pytest
from helpers import config_options, read_rows, sigterm_on_call
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
def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path, capsys):
    code = rnnlm_main(["train", "-m", *QUICK, "seed=1,2", "threads=1", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert code == 0, capsys.readouterr().err[-3000:]
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


def test_the_cli_and_the_sweeper_use_only_hydras_public_surface():
    import hydra_plugins.rnnlm_optuna_sweeper as sweeper

    import rnnlm

    files = [p for package in (rnnlm, sweeper) for p in Path(package.__file__).parent.rglob("*.py")]
    assert len(files) > 10 and [str(p) for p in files if "hydra._internal" in p.read_text()] == []


def study_trials(sweep_dir, name="dropout"):
    """The trials of the search kept in ``sweep_dir``, read back with Optuna."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


SEARCH = (*QUICK, "threads=1", "sweep=optuna_dropout")  # trials of 5 segments an epoch


def test_an_interrupted_search_continues_where_it_stopped(tmp_path, monkeypatch):
    """SIGTERM in the second trial's first epoch stops the search (exit 130); the same command
    with resume=auto keeps the finished trial (not run again), continues the second in its
    directory and adds the third: three trials, as asked, and rnnlm summary reads them all."""
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    command = ["train", "-m", *SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.get_batch", 5 + 3)  # trial 1, its third segment
        assert rnnlm_main(command) == 130
    before = study_trials(sweep)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert read_rows(sweep / "1" / "result.csv")[0]["status"] == "interrupted"
    kept = {p: p.read_bytes() for job in ("0",) for p in (sweep / job).rglob("*") if p.is_file()}

    assert rnnlm_main([*command, "resume=auto"]) == 0
    after = study_trials(sweep)
    assert [t.number for t in after] == [0, 1, 2] and {t.state for t in after} == {TrialState.COMPLETE}
    assert [t.params for t in after[:2]] == [t.params for t in before]  # trial 1 kept its rates
    assert {p: p.read_bytes() for p in kept} == kept  # the finished trials were not run again
    results = job_results(sweep)
    assert [r["status"] for r in results] == ["completed"] * 3 and [r["epochs_run"] for r in results] == ["1"] * 3
    for trial, row in zip(after, results):
        assert trial.value == pytest.approx(float(row["best_val_ppl"]))
        assert float(row["dropout.output"]) == pytest.approx(trial.params["dropout.output"])
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(t.value for t in after)) and best.n_trials == 3

    assert len({tuple(t.params.items()) for t in after}) == 3  # a continued search draws new points
    assert rnnlm_main(["summary", str(sweep), "--format", "csv"]) == 0
    rows = read_rows(sweep / "summary.csv")
    assert sorted(float(row["val_ppl_mean"]) for row in rows) == pytest.approx(sorted(t.value for t in after))


def test_a_search_prunes_a_hopeless_trial_at_an_epoch_end(tmp_path):
    """A study whose first trial reached perplexity 1.0 at every epoch: with the median pruner
    the next trial (about 30 after its first epoch) stops there, its run ends status=pruned,
    untested, with its checkpoint saved, and the study marks it pruned with the perplexity
    it reported (as Optuna records a pruned trial)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(sweep / "optuna.journal")))
    study = optuna.create_study(study_name="dropout", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(
        params={"dropout.output": 0.1}, distributions={"dropout.output": FloatDistribution(0.0, 0.6)},
        value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    assert rnnlm_main(["train", "-m", *SEARCH, "trainer.max_epochs=2", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.pruner.name=median",
                       "hydra.sweeper.pruner.n_startup_trials=1", f"hydra.sweep.dir={sweep}"]) == 0
    trial = study_trials(sweep)[1]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 1
    (row,) = job_results(sweep)
    assert (row["status"], row["stop_reason"], row["epochs_run"]) == ("pruned", "pruned", "1")
    assert row["test_ppl"] == row["test_loss"] == row["mc_test_ppl"] == ""  # never tested
    assert float(row["best_val_ppl"]) == pytest.approx(trial.intermediate_values[1]) == pytest.approx(trial.value)
    assert (sweep / "1" / "checkpoints" / "last.pt").is_file() and (sweep / "1" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("overrides,message", [
    (("hydra/sweeper=rnnlm_optuna",), "the search has no dimension"),
    (("sweep=optuna_dropout", "hydra.sweeper.pruner.name=bogus"), "pruner.name=bogus is not one of none, median, hyperband"),
    # the space, before the first trial: what Optuna cannot sample, and what a trial would be refused
    (("hydra/sweeper=rnnlm_optuna", "dropout.output=interval(0.9,0.1)"),
     "dropout.output=interval(0.9,0.1): `low <= high` must hold"),
    (("sweep=optuna_dropout", "optim.lr=tag(log, interval(0, 40))"), "`low > 0` must hold for `log=True`"),
    (("hydra/sweeper=rnnlm_optuna", "dropout.output=interval(0.1,1.5)"),
     "the search dimension 'dropout.output=interval(0.1,1.5)' reaches a value rnnlm refuses: "
     "dropout.output=1.5 is outside [0, 1)"),
    (("sweep=optuna_dropout", "dropout/recurrent=choice(zoneout,bogus)"),
     "dropout/recurrent=bogus is not a known option"),
    (("sweep=optuna_dropout", "dropout.hidden=0.99", "trainer.bptt=0"), "trainer.bptt"),  # a fixed override
    (("hydra/sweeper=rnnlm_optuna", "optim=sgd", "optim.name=choice(nt_asgd,sgd)",
      "trainer.average=choice(uniform,none)"),
     "the search space reaches a config rnnlm refuses at optim.name=nt_asgd trainer.average=uniform: "
     "trainer.average=uniform needs optim=sgd"),  # each value alone is allowed, not the two together
])
def test_a_bad_search_is_refused_in_one_line_and_leaves_nothing(tmp_path, capsys, overrides, message):
    assert rnnlm_main(["train", "-m", *QUICK, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlm: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "sweep").exists()


def test_the_search_uses_a_maintained_optuna():
    from importlib.metadata import version

    assert int(version("optuna").split(".")[0]) >= 4
