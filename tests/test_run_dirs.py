"""Never lose a run: one directory per run, signals at any moment, resume=auto, failed writes.

Runs go through the console script's entry point (in this process, so that a test can
patch a function to send SIGTERM at an exact moment) or through the console script itself
where separate processes matter.
"""

import errno
import itertools
import os
import shutil
import signal

import pytest
import torch
from helpers import read_rows, sigterm_on_call, start_rnnlm
from omegaconf import OmegaConf

from rnnlm.cli import main as rnnlm_main
from rnnlm.rundir import CLAIM, claim_stopped
from rnnlm.training import load_checkpoint, save_checkpoint

# Three short epochs of the smoke model on the tiny corpus (5 segments of 4 x 10 tokens each).
RUN = ("experiment=smoke", "dataset.batch_size=4", "dataset.eval_batch_size=2", "dataset.test_batch_size=2",
       "trainer.bptt=10", "trainer.max_batches=5", "trainer.max_epochs=3", "trainer.progress=false", "threads=1")
TIMING = {"epoch_seconds", "tokens_per_second", "wall_seconds", "run_dir"}


def numbers(run_dir):
    """What a run computed: its metrics and result rows without timings and its directory."""
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING}  # noqa: E731
    return [strip(r) for r in read_rows(run_dir / "metrics.csv")], strip(read_rows(run_dir / "result.csv")[0])


def run_files(run_dir) -> dict:
    """The contents of a run's files, less its claim (which records the last process to look)."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != CLAIM}


def same_payload(a, b) -> bool:
    """Equal checkpoint contents, tensors compared exactly, timings ignored."""
    if isinstance(a, dict):
        keys = set(a) - TIMING - {"train_seconds", "total_seconds"}
        return keys == set(b) - TIMING - {"train_seconds", "total_seconds"} and all(same_payload(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


# ------------------------------------------------------------------ one run, one directory
@pytest.mark.slow
def test_runs_launched_together_never_share_a_directory(tmp_path):
    """Four launches at once: two with default directories (both complete, each in its own),
    two given one explicit directory (exactly one proceeds, and its files are what the same
    run writes alone)."""
    quick = (*RUN, "trainer.max_epochs=1")
    shared = tmp_path / "shared"
    procs = [start_rnnlm("train", *quick, f"seed={seed}", cwd=tmp_path) for seed in (1, 2)]
    procs += [start_rnnlm("train", *quick, f"seed={seed}", f"hydra.run.dir={shared}", cwd=tmp_path) for seed in (1, 2)]
    outcomes = [(proc.communicate(timeout=300)[1], proc.returncode)[::-1] for proc in procs]

    assert [code for code, _ in outcomes[:2]] == [0, 0], [err[-1000:] for _, err in outcomes[:2]]
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2
    for run_dir in runs:
        saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        (row,) = read_rows(run_dir / "result.csv")
        assert row["status"] == "completed" and row["seed"] == str(saved.seed)
    assert sorted(read_rows(r / "result.csv")[0]["seed"] for r in runs) == ["1", "2"]

    assert sorted(code for code, _ in outcomes[2:]) == [0, 2], [err[-1000:] for _, err in outcomes[2:]]
    (loser,) = [err for code, err in outcomes[2:] if code == 2]
    assert loser.count("\n") == 1 and loser.startswith("rnnlm: error: ") and str(shared) in loser
    winner = read_rows(shared / "result.csv")[0]["seed"]
    (solo,) = [r for r in runs if read_rows(r / "result.csv")[0]["seed"] == winner]
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(shared) == files(solo)
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/best.pt"):
        assert (shared / name).read_bytes() == (solo / name).read_bytes(), name
    last = [load_checkpoint(d / "checkpoints" / "last.pt") for d in (shared, solo)]
    assert same_payload(*last)  # all but the timings it records
    assert numbers(shared) == numbers(solo)
    assert (shared / "rnnlm_train.log").read_text().count("params, vocab") == 1  # the loser wrote no log there


# ------------------------------------------------------------------ a signal at any moment
STOPS = {  # where SIGTERM arrives -> what is left to do
    "validation": ("rnnlm.training.trainer.segment_losses", 2, "interrupted_train"),  # epoch 2's validation
    "checkpoint": ("rnnlm.run.save_checkpoint", 2, "interrupted_train"),  # epoch 1's last.pt
    "test": ("rnnlm.run.evaluate", 1, "interrupted_test"),  # the final test
}


@pytest.mark.parametrize("moment", list(STOPS))
def test_sigterm_at_any_moment_then_resume_gives_the_same_numbers(moment, reference, tmp_path, monkeypatch):
    target, nth, stop_reason = STOPS[moment]
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, target, nth)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 130
    (row,) = read_rows(run_dir / "result.csv")
    assert row["status"] == "interrupted" and row["stop_reason"] == stop_reason
    if moment == "test":  # training is done and saved: the resume only tests
        assert len(read_rows(run_dir / "metrics.csv")) == 3 and row["test_ppl"] == ""
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]["finished"]
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]
    (row,) = read_rows(run_dir / "result.csv")
    assert row["status"] == "completed" and row["test_ppl"] == read_rows(reference / "result.csv")[0]["test_ppl"]


def test_resume_run_dir_replays_the_saved_overrides_and_keeps_the_saved_budget(reference, tmp_path, monkeypatch):
    """resume=RUN_DIR is resume=auto on the run's own overrides and directory; a budget key
    the command does not give keeps the run's saved value even where the presets now differ."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 130
    overrides = run_dir / ".hydra" / "overrides.yaml"  # as if max_epochs=3 had come from a preset
    overrides.write_text(OmegaConf.to_yaml(OmegaConf.create(
        [o for o in OmegaConf.load(overrides) if not o.startswith("trainer.max_epochs=")])))
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]  # three epochs, as the run was started


def test_a_run_whose_checkpoint_has_older_metrics_names_resumes(reference, tmp_path, monkeypatch):
    """An epoch's tokens, checkpointed and written to metrics.csv as ``train_tokens`` by an
    older rnnlm, are read as ``epoch_tokens``: the run resumes to the same numbers."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 130
    last = run_dir / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    old = [{"train_tokens" if k == "epoch_tokens" else k: v for k, v in row.items()}
           for row in payload["trainer"]["metrics"]]
    assert old and all("train_tokens" in row for row in old)
    save_checkpoint(last, {**payload, "trainer": {**payload["trainer"], "metrics": old}})
    metrics = run_dir / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("epoch_tokens", "train_tokens"))
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]


def test_both_ways_of_resuming_allow_the_same_changes(reference, tmp_path, monkeypatch, capsys):
    """A budget key or a tracker may change on resume=RUN_DIR as on resume=auto; any other
    setting is refused by both, and both refusals state the one rule."""
    from rnnlm.cli.resume import RESUME_RULE, check_same_config, load_saved_config, named_resume_argv
    from rnnlm.config import ConfigError
    from rnnlm.rundir import ClaimError

    allowed = ["logger=tensorboard", "logger.tensorboard.dir=tb", "trainer.max_epochs=5", "device=cpu"]
    assert set(allowed) <= set(named_resume_argv(reference, allowed))
    check_same_config(reference, load_saved_config(reference, ["logger.tensorboard.dir=tb", "trainer.max_epochs=5"]))
    with pytest.raises(ConfigError, match="cannot change on resume") as named:
        named_resume_argv(reference, ["dropout.output=0.1"])
    with pytest.raises(ClaimError, match="different config") as auto:
        check_same_config(reference, load_saved_config(reference, ["dropout.output=0.1"]))
    assert RESUME_RULE in str(named.value) and RESUME_RULE in str(auto.value)

    run_dir = tmp_path / "run"  # resume=RUN_DIR adds a tracker to a stopped run and finishes it
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 130
    assert rnnlm_main(["train", f"resume={run_dir}", "logger=tensorboard"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]
    assert (run_dir / "tensorboard").is_dir() and read_rows(run_dir / "result.csv")[0]["status"] == "completed"


def test_resume_auto_with_an_unreadable_checkpoint_is_one_line(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "result.csv").write_text((run_dir / "result.csv").read_text().replace("completed", "interrupted"))
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}", "resume=auto"]) == 2
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and err.count("\n") == 1


# ------------------------------------------------------------------------- resume=auto
def test_resume_auto_starts_afresh_in_an_empty_directory(reference, tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}", "resume=auto"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]


def test_resume_auto_continues_the_interrupted_run_with_the_same_config(reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    command = ["train", *RUN, f"hydra.run.dir={run_dir}", "resume=auto"]
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)
        assert rnnlm_main(command) == 130
    hydra_files = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    assert rnnlm_main(command) == 0  # the same command again, as a requeued job runs it
    assert numbers(run_dir)[0] == numbers(reference)[0]
    assert read_rows(run_dir / "result.csv")[0]["status"] == "completed"
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_files


def test_resume_auto_passes_over_a_completed_run_and_refuses_a_different_or_a_running_one(
    reference, tmp_path, monkeypatch, capsys
):
    def refused(*overrides: str) -> str:
        assert rnnlm_main(["train", *RUN, *overrides, "resume=auto"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnlm: error: ") and err.count("\n") == 1
        return err

    files = run_files(reference)
    assert rnnlm_main(["train", *RUN, f"hydra.run.dir={reference}", "resume=auto"]) == 0  # nothing to do
    assert run_files(reference) == files
    # a tracker is not part of what is trained: the run is still this one
    assert rnnlm_main(["train", *RUN, "logger=tensorboard",
                       f"hydra.run.dir={reference}", "resume=auto"]) == 0
    assert run_files(reference) == files
    assert "different config (seed=141, not 2)" in refused(f"hydra.run.dir={reference}", "seed=2")
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 130
    capsys.readouterr()
    assert "different config (seed=141, not 2)" in refused(f"hydra.run.dir={run_dir}", "seed=2")
    with claim_stopped(run_dir):  # as a live run holds it
        assert "in use by a running process" in refused(f"hydra.run.dir={run_dir}")
    assert read_rows(run_dir / "result.csv")[0]["status"] == "interrupted"  # untouched



def test_a_sweep_continued_with_resume_auto_passes_over_its_finished_jobs(tmp_path, monkeypatch):
    """SIGTERM in the second of two seeds stops the sweep; the same command with resume=auto
    leaves the finished job's files as they are and finishes the second, exit 0."""
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *RUN, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.segment_losses", 2)  # the second job's validation
        assert rnnlm_main(command) == 130
    assert [read_rows(sweep / job / "result.csv")[0]["status"] for job in "01"] == ["completed", "interrupted"]
    finished = run_files(sweep / "0")
    assert rnnlm_main([*command, "resume=auto"]) == 0
    assert run_files(sweep / "0") == finished
    assert read_rows(sweep / "1" / "result.csv")[0]["status"] == "completed"


# ----------------------------------------------------------------------- failed writes
def test_a_full_disk_keeps_the_last_good_files_and_the_run_resumes(reference, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    import rnnlm.training.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, itertools.count(1)

    def save(obj, path, *args, **kwargs):
        if "trainer" in obj and next(calls) == 2:  # epoch 2's last.pt (best.pt holds weights alone)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.torch, "save", save)
        assert rnnlm_main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    last = run_dir / "checkpoints" / "last.pt"
    assert err.count("\n") == 1 and f"cannot write {last}: No space left on device" in err
    assert f"resume={run_dir}" in err
    assert read_rows(run_dir / "result.csv")[0]["status"] == "failed"
    assert load_checkpoint(last)["trainer"]["epoch"] == 2  # the last good one: after epoch 1
    assert len(read_rows(run_dir / "metrics.csv")) == 1
    assert not list(run_dir.rglob("*.tmp"))
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    assert numbers(run_dir)[0] == numbers(reference)[0]


def test_the_claim_is_held_only_while_the_run_lives(reference):
    assert (reference / CLAIM).is_file()
    with claim_stopped(reference):  # nobody holds it now
        pass


def test_a_file_system_without_flock_is_said_once_in_the_log(tmp_path, monkeypatch, caplog):
    from rnnlm import rundir

    monkeypatch.setattr(rundir, "try_lock", lambda fd: False)  # as flock on a file system without it
    monkeypatch.setattr(rundir, "_said_unlocked", False)
    with caplog.at_level("WARNING", logger="rnnlm.rundir"):
        for name in ("a", "b"):
            with rundir.claim_new(tmp_path / name) as claim:
                assert not claim.locked
    (record,) = caplog.records
    assert "has no flock" in record.getMessage() and str(tmp_path / "a") in record.getMessage()


def test_a_signal_is_passed_on_to_the_handler_installed_before():
    """How a scheduler's own handler (submitit's requeue on SIGUSR2) still runs: after the run."""
    from rnnlm.training.signals import stop_on_signals

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop() and seen == []  # the run sees it first and saves its state
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
