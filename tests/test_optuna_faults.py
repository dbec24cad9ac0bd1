"""Faults of an Optuna search (``hydra/sweeper=rnnlm_optuna``) on the tiny corpus: a pruned run
is never taken for a completed one, searches started on one study share its trials, a
diverged trial counts against its region and is never the best, and a search space is
checked before anything is written."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest
from helpers import read_rows, start_rnnlm
from omegaconf import OmegaConf

from rnnlm.cli import main as rnnlm_main
from rnnlm.results import RESULT_COLUMNS, read_csv, write_csv

# One short epoch of the smoke model per trial: 5 batches of 4 x 10 tokens.
QUICK = ("experiment=smoke", "dataset.batch_size=4", "trainer.bptt=10", "trainer.max_epochs=1",
         "trainer.max_batches=5", "trainer.progress=false", "threads=1")
SEARCH = (*QUICK, "sweep=optuna_dropout")


def journal(sweep: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    sweep.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(sweep / "optuna.journal")))


def study(sweep: Path, name: str = "dropout"):
    import optuna

    return optuna.create_study(study_name=name, storage=journal(sweep), direction="minimize", load_if_exists=True)


def files_of(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.name != ".rnnlm-claim"}


# ------------------------------------------------------------------ a pruned run is not completed

@pytest.fixture(scope="module")
def pruned_search(tmp_path_factory):
    """A study whose trial 0 reached perplexity 1.0 at every epoch, so the median pruner stops
    trial 1 after its first epoch; the search is killed before it tells the study (exit 137),
    then continued with resume=auto. Returns (sweep dir, trial 1 before, files of job 1 before)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from hydra_plugins.rnnlm_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweep = tmp_path_factory.mktemp("pruned") / "sweep"
    study(sweep).add_trial(optuna.trial.create_trial(
        params={"dropout.output": 0.1}, distributions={"dropout.output": FloatDistribution(0.0, 0.6)},
        value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    command = ["train", "-m", *SEARCH, "trainer.max_epochs=2", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=1",
               f"hydra.sweep.dir={sweep}"]

    def killed(*args, **kwargs):
        raise SystemExit(137)

    # Hydra's plugin scan (on the first Plugins.instance(), when rnnlm.cli.train is imported)
    # executes the sweeper's module again, with a new class: patch the one Hydra will use.
    import rnnlm.cli.train  # noqa: F401
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    used = [c for c in Plugins.instance().discover(Sweeper) if c.__name__ == OptunaSweeper.__name__]
    with pytest.MonkeyPatch.context() as patch:
        for cls in used:
            patch.setattr(cls, "_tell", killed)
        assert rnnlm_main(command) == 137
    before = study(sweep).trials[1]
    kept = files_of(sweep / "1")
    assert rnnlm_main([*command, "resume=auto"]) == 0
    return sweep, before, kept


def test_a_pruned_run_ends_pruned_untested_with_its_checkpoint(pruned_search):
    sweep, _, _ = pruned_search
    (row,) = read_rows(sweep / "1" / "result.csv")
    assert (row["status"], row["stop_reason"], row["epochs_run"]) == ("pruned", "pruned", "1")
    assert row["test_loss"] == row["test_ppl"] == row["mc_val_ppl"] == row["mc_test_ppl"] == ""
    assert float(row["best_val_ppl"]) > 1
    assert (sweep / "1" / "checkpoints" / "last.pt").is_file()


def test_a_search_that_died_before_telling_a_pruned_trial_tells_it_pruned(pruned_search):
    """The restart reads the finished run and tells PRUNED (with the last reported value, as
    Optuna does), never COMPLETE with the early value, and does not run it again."""
    from optuna.trial import TrialState

    sweep, before, kept = pruned_search
    assert before.state == TrialState.RUNNING  # the first search died before telling it
    trial = study(sweep).trials[1]
    assert trial.state == TrialState.PRUNED
    assert trial.value == pytest.approx(trial.intermediate_values[1])
    assert trial.value == pytest.approx(float(read_rows(sweep / "1" / "result.csv")[0]["best_val_ppl"]))
    assert files_of(sweep / "1") == kept  # not run again


def test_resume_treats_a_pruned_run_as_finished(pruned_search, capsys):
    from rnnlm.cli.resume import RunFinished, check_not_finished

    sweep, _, kept = pruned_search
    with pytest.raises(RunFinished) as done:  # resume=auto passes over it
        check_not_finished(sweep / "1")
    assert done.value.status == "pruned" and done.value.best == math.inf
    assert rnnlm_main(["train", f"resume={sweep / '1'}"]) == 2
    assert "that run already pruned; nothing to resume" in capsys.readouterr().err
    assert files_of(sweep / "1") == kept


def test_the_summary_lists_a_pruned_run_as_not_summarised(pruned_search, capsys):
    sweep, _, _ = pruned_search
    assert rnnlm_main(["summary", str(sweep)]) == 1  # its only run was pruned: nothing to summarise
    err = capsys.readouterr().err
    assert "1 of 1 runs not summarised (1 pruned)" in err
    assert "stopped by the search's pruner after epoch 1; not tested" in err


def test_the_summary_counts_no_pruned_run_as_completed(tmp_path, capsys):
    """n counts the completed run alone: neither a status=pruned run nor one an older rnnlm
    recorded completed with stop_reason=pruned enters the mean."""
    from test_summary import make_run

    make_run(tmp_path / "s" / "0", seed=1, val=60.0, test=59.0)
    make_run(tmp_path / "s" / "1", seed=2, val=40.0, test=None, status="pruned")
    legacy = make_run(tmp_path / "s" / "2", seed=3, val=30.0, test=29.0)
    (row,) = read_csv(legacy / "result.csv")
    write_csv(legacy / "result.csv", [{**row, "stop_reason": "pruned"}], RESULT_COLUMNS)
    assert rnnlm_main(["summary", str(tmp_path / "s"), "--format", "csv"]) == 0
    (summary,) = read_rows(tmp_path / "s" / "summary.csv")
    assert summary["n"] == "1" and float(summary["val_ppl_mean"]) == 60.0
    err = capsys.readouterr().err
    assert "2 of 3 runs not summarised (2 pruned)" in err and err.count("stopped by the search's pruner") == 2


def test_a_finished_run_is_read_as_it_ended(tmp_path):
    from rnnlm.search.trials import Finished, finished_run

    def outcome(**row):
        (tmp_path / "result.csv").unlink(missing_ok=True)
        write_csv(tmp_path / "result.csv", [row], RESULT_COLUMNS)
        return finished_run(tmp_path)

    assert outcome(status="completed", stop_reason="max_epochs", best_val_ppl=50.0) == Finished("completed", 50.0)
    assert outcome(status="pruned", stop_reason="pruned", best_val_ppl=80.0) == Finished("pruned", None)
    assert outcome(status="completed", stop_reason="pruned", best_val_ppl=80.0) == Finished("pruned", None)
    assert outcome(status="diverged", stop_reason="diverged", vocab_size=10000) == Finished("diverged", 10000.0)
    assert outcome(status="interrupted", stop_reason="interrupted_train", best_val_ppl=80.0) is None
    assert finished_run(tmp_path / "nothing") is None


# ------------------------------------------------------------------ a diverged trial

def test_a_diverged_trial_is_infeasible_and_never_the_best(tmp_path):
    """optim.lr=1e12 without clipping diverges: its trial is COMPLETE with the uniform model's
    perplexity (the vocabulary size), marked diverged and infeasible, which TPE ranks below
    every feasible trial; the best is the trial that trained, even where the diverged
    trial's value is lower (the tiny corpus has 37 words)."""
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    s = study(sweep, "rnnlm")
    s.enqueue_trial({"optim.lr": 1e12})
    s.enqueue_trial({"optim.lr": 20.0})
    assert rnnlm_main(["train", "-m", *QUICK, "optim.clip=0", "hydra/sweeper=rnnlm_optuna", "hydra.sweeper.n_trials=2",
                       "optim.lr=interval(20, 1e12)", f"hydra.sweep.dir={sweep}"]) == 0
    bad, good = study(sweep, "rnnlm").trials
    (row,) = read_rows(sweep / "0" / "result.csv")
    assert row["status"] == "diverged" and bad.params == {"optim.lr": 1e12}
    assert bad.state == TrialState.COMPLETE and bad.value == float(row["vocab_size"])
    assert bad.user_attrs["diverged"] is True and list(bad.system_attrs["constraints"]) == [1.0]
    assert good.state == TrialState.COMPLETE and list(good.system_attrs["constraints"]) == [0.0]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_trial == 1 and best.best_value == pytest.approx(good.value)
    assert study(sweep, "rnnlm").best_trial.number == 1  # Optuna's own choice skips it too


def test_the_best_trial_is_never_a_diverged_one(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from rnnlm.search.trials import RESULTS

    sweeper = make_sweeper()
    s = sweeper_study(sweeper, tmp_path)
    dist = {"x": FloatDistribution(0.0, 1.0)}
    s.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=1.0,
                                          user_attrs={"diverged": True}))
    sweeper._write_results(s)
    assert not (tmp_path / RESULTS).exists()  # no feasible trial yet: no best
    s.add_trial(optuna.trial.create_trial(params={"x": 0.2}, distributions=dist, value=50.0))
    sweeper._write_results(s)
    assert OmegaConf.load(tmp_path / RESULTS).best_trial == 1


# ------------------------------------------------------------------ several searches on one study

def make_sweeper(sampler: str = "random"):
    from hydra_plugins.rnnlm_optuna_sweeper.optuna_sweeper import OptunaSweeper

    return OptunaSweeper(direction="minimize", study_name="rnnlm", storage=None, n_trials=1, n_jobs=1,
                         sampler=OmegaConf.create({"name": sampler}), pruner=OmegaConf.create({"name": "none"}))


def sweeper_study(sweeper, sweep: Path):
    from rnnlm.search import study as _study

    sweeper.sweep_dir = sweep
    sweeper.store = _study.storage(None, sweep)
    s = _study.open_study(sweeper.settings, sweeper.store)
    sweeper.study_id = sweeper.store.get_study_id_from_name(s.study_name)
    return s


def test_telling_a_trial_another_search_told_first_is_logged_not_raised(tmp_path, caplog, monkeypatch):
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from rnnlm.search.trials import Finished

    sweeper = make_sweeper()
    s = sweeper_study(sweeper, tmp_path)
    trial = s.ask({"x": FloatDistribution(0.0, 1.0)})
    s.tell(trial.number, 3.0)  # the other search
    with caplog.at_level(logging.WARNING):
        sweeper._tell(s, trial.number, Finished("completed", 5.0))
    assert "already told COMPLETE by another search" in caplog.text
    # told between this search's look and its tell: Optuna's own check skips it
    trial = s.ask({"x": FloatDistribution(0.0, 1.0)})
    running = sweeper._trial(trial.number)
    s.tell(trial.number, state=TrialState.FAIL)
    monkeypatch.setattr(sweeper, "_trial", lambda number: running)
    sweeper._tell(s, trial.number, Finished("completed", 5.0))
    assert [(t.state, t.value) for t in s.trials] == [(TrialState.COMPLETE, 3.0), (TrialState.FAIL, None)]


def test_a_trial_a_live_process_holds_is_left_to_it(tmp_path):
    """Trial 0 is running in a job whose search died (the job still holds its run claim), trial
    1 in another live search (its trial lock): a search started meanwhile runs neither and adds
    trial 2. Once both have let go, the next search takes them over and runs them."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from rnnlm.search.locks import TrialLocks
    from rnnlm.rundir import claim_new

    sweep = tmp_path / "sweep"
    s = study(sweep)
    for _ in range(2):
        s.ask({"dropout.output": FloatDistribution(0.0, 0.6)})
    claim, other = claim_new(sweep / "0"), TrialLocks(sweep)
    assert other.acquire(1)
    command = ["train", "-m", *SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}", "resume=auto"]
    try:
        assert rnnlm_main(command) == 0
        assert [t.state for t in study(sweep).trials] == [TrialState.RUNNING, TrialState.RUNNING, TrialState.COMPLETE]
        assert not (sweep / "0" / "result.csv").exists() and not (sweep / "1").exists()
    finally:
        claim.release()
        other.release_all()
    assert rnnlm_main(command) == 0
    trials = study(sweep).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [read_rows(sweep / str(n) / "result.csv")[0]["status"] for n in range(3)] == ["completed"] * 3


def launched(output: str) -> set[int]:
    """The job numbers a search launched, from Hydra's launcher log lines ``#N : overrides``."""
    return {int(line.split("#", 1)[1].split(":", 1)[0]) for line in output.splitlines() if "\t#" in line}


@pytest.mark.slow
def test_two_searches_on_one_study_share_its_trials(tmp_path):
    """Search B starts while search A runs trial 0 (each trial trains for 5 s): B leaves the
    trials A holds to A, each runs trials of its own, no trial runs twice or fails, every
    trial ends COMPLETE, and the two stop at n_trials together."""
    from optuna.trial import TrialState

    sweep = tmp_path / "sweep"
    args = ("train", "-m", *SEARCH, "trainer.max_epochs=1000", "trainer.max_batches=null", "trainer.max_minutes=0.08",
            "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}", "resume=auto")
    first, second = start_rnnlm(*args, cwd=tmp_path), None
    try:
        deadline = time.monotonic() + 60
        while not (sweep / "0" / "metrics.csv").exists():  # trial 0 trains: its lock and claim are held
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        second = start_rnnlm(*args, cwd=tmp_path)
        outputs = [proc.communicate(timeout=120) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in (first, second)] == [0, 0], [err[-3000:] for _, err in outputs]
    ran = [launched(out) for out, _ in outputs]
    trials = study(sweep).trials
    assert 0 in ran[0] and ran[1] and not ran[0] & ran[1]  # B ran trials of its own, never A's
    assert ran[0] | ran[1] == {t.number for t in trials} and 4 <= len(trials) <= 5
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    for t in trials:
        (row,) = read_rows(sweep / str(t.number) / "result.csv")
        assert row["status"] == "completed" and t.value == pytest.approx(float(row["best_val_ppl"]))
        log = (sweep / str(t.number) / "rnnlm_train.log").read_text()
        assert log.count("run dir") == 1  # one run in each directory, never a second one
