"""Bad input, divergence, interruption and resume, atomic writes, determinism, no overwrite."""

import hashlib
import logging
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import config_options, read_rows, run_rnnlm, start_rnnlm, tiny

from rnnlm.cli import main as rnnlm_main
from rnnlm.dropout import registered_schemes
from rnnlm.results import write_csv
from rnnlm.training import CheckpointError, load_checkpoint, save_checkpoint

# A short but real run of the smoke model on the tiny corpus: 3 epochs of 150 steps of
# 1 x 5 tokens, long enough (a few tenths of a second each) to interrupt one mid-way. One
# thread, so runs in this process and in a child compute bit-identical numbers (GEMM sums
# depend on the thread count, and 450 steps at lr 20 turn that into different perplexities).
BASE = ("experiment=smoke", "dataset.batch_size=1", "trainer.bptt=5", "trainer.max_epochs=3",
        "trainer.max_batches=150", "trainer.progress=false", "threads=1")


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch, tmp_path):
    """In-process calls write only under tmp_path (and read the tiny corpus, see conftest)."""
    monkeypatch.chdir(tmp_path)


def val_ppls(run_dir: Path) -> list[str]:
    return [row["val_ppl"] for row in read_rows(run_dir / "metrics.csv")]


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of BASE (seed 141)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert rnnlm_main(["train", *BASE, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


# ------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (["dropout.output=1.5"], "dropout.output=1.5 is outside [0, 1)"),
    (["dropout.recurrent.rate=-0.1"], "dropout.recurrent.rate=-0.1 is outside [0, 1)"),
    (["dropout.recurrent.kind=gal"], "dropout.recurrent.kind=gal is not a recurrent dropout scheme; "
     f"choose one of: {', '.join(registered_schemes())}"),
    (["dropout.recurrent.mask=diagonal"], "dropout.recurrent.mask=diagonal does not go with dropout.recurrent.kind="),
    (["dropout.recurrent.kind=variational", "dropout.recurrent.mask=row"],
     "dropout.recurrent.mask=row does not go with dropout.recurrent.kind=variational; choose one of: tied, untied"),
    (["dropout.recurrent.kind=none"], "dropout.recurrent.rate=0.5 has no effect with dropout.recurrent.kind=none"),
    (["dropout.embedding_mask=tokens"],
     "dropout.embedding_mask=tokens: Invalid value 'tokens', expected one of [batch, sequence, token]"),
    *(([f"{group}={bad}"], f"{group}={bad} is not a known option; choose one of: {', '.join(config_options(group))}")
      for group, bad in (("dataset", "ptb2"), ("experiment", "awd"))),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be a positive number"),
    (["trainer.bptt=-5"], "trainer.bptt=-5 must be a positive number"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 must be a positive number"),
    (["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0 must be a positive number"),
    (["dataset.train_tokens=0"], "dataset.train_tokens=0 must be a positive number"),
    (["dataset.train_tokens=99999999"], f"dataset.train_tokens=99999999 exceeds the {tiny().train.numel()} tokens"),
    (["seed=abc"], "seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["model.nhid=0"], "model.nhid=0 must be a positive number"),
    (["dataset.test_batch_size=100000"],
     f"dataset.test_batch_size=100000 is too large for the {tiny().test.numel()}-token test split"),
    (["threads=0"], "threads=0 must be a positive number"),
    (["model.size=3"], "model.size is not a config key"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch is not a config key (a leading + adds keys that nothing reads)"),
    (["+foo=1"], "foo is not a config key"),
    (["device=tpu"], "device=tpu is not a device"),
    (["dataset.path=/no/such/dir"], "dataset.path=/no/such/dir does not exist"),
    (["-m", "seed=1,x"], "seed=x: Value 'x' of type 'str' could not be converted to Integer"),
    (["hydra.run.dir=/proc/rnnlm/run"], "hydra.run.dir=/proc/rnnlm/run cannot be created: "),
]
if not torch.cuda.is_available():
    BAD_INPUT.append((["device=cuda"], "device=cuda but CUDA is not available here; use device=cpu"))


@pytest.mark.parametrize("overrides,message", BAD_INPUT, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_one_line_exit_2_nothing_written(overrides, message, tmp_path, capsys):
    flags = [o for o in overrides if o.startswith("-")]  # Hydra takes its flags before the overrides
    code = rnnlm_main(["train", *flags, "experiment=smoke", *(o for o in overrides if o not in flags)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("rnnlm: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("argv,message", [
    (["--cfg", "job", "-m", "experiment=smoke", "seed=1,2"], "Only one of --run, --multirun, --cfg, --info"),
    (["-m", "--cfg", "hydra", "experiment=smoke"], "Only one of --run, --multirun, --cfg, --info"),
    (["--resolve", "experiment=smoke"], "The --resolve flag can only be used in conjunction with --cfg"),
    (["--shell-completion", "experiment=smoke"], "Expecting one subcommand"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_hydra_flags_that_do_not_go_together_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert rnnlm_main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("rnnlm: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_non_utf8_split_is_one_clear_line(tmp_path, capsys):
    data = tmp_path / "corpus"
    data.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (data / name).write_bytes(b"a b c\n" if name != "valid.txt" else b"caf\xe9\n")
    assert rnnlm_main(["train", "experiment=smoke", f"dataset.path={data}"]) == 2
    err = capsys.readouterr().err
    assert "valid.txt is not UTF-8" in err and err.count("\n") == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("split", ["valid.txt", None])
def test_missing_split_and_empty_corpus(split, tmp_path, capsys):
    data = tmp_path / "corpus"
    data.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (data / name).write_text("" if split is None and name == "test.txt" else "a b c\n")
    if split:
        (data / split).unlink()
    code = rnnlm_main(["train", "experiment=smoke", f"dataset.path={data}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert ("valid.txt is missing" in err) if split else ("test.txt is empty" in err)
    assert not (tmp_path / "outputs").exists()


def test_no_local_data_and_no_hub_says_how_to_point_at_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNLM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path / ".cache"))
    assert rnnlm_main(["train", "experiment=smoke"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dataset.path=DIR" in err and "RNNLM_DATA_DIR" in err
    assert not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------------ divergence
def test_divergence_stops_cleanly_with_status_diverged(tmp_path, capsys):
    assert rnnlm_main(["train", *BASE, "optim.lr=1e12", "optim.clip=0", "hydra.run.dir=run"]) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "Traceback" not in err
    (result,) = read_rows(tmp_path / "run" / "result.csv")
    assert result["status"] == "diverged"
    assert result["test_ppl"] == "" and result["best_val_ppl"] == ""


# ------------------------------------------------------- determinism and no overwrite
def test_same_seed_same_metrics(reference, tmp_path):
    assert rnnlm_main(["train", *BASE, "hydra.run.dir=again"]) == 0
    assert val_ppls(tmp_path / "again") == val_ppls(reference)
    assert read_rows(tmp_path / "again" / "result.csv")[0]["test_ppl"] == read_rows(reference / "result.csv")[0]["test_ppl"]


def test_a_run_leaves_the_callers_thread_count_alone(tmp_path):
    """``threads=N`` is the run's own setting: rnnlm.cli.main in a notebook or a test
    process gives torch's thread count back when the run ends."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert rnnlm_main(["train", *BASE, "trainer.max_epochs=1", "trainer.max_batches=2", "hydra.run.dir=t"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_new_run_never_overwrites_a_finished_run(reference, capsys):
    before = digest(reference)
    code = rnnlm_main(["train", *BASE, f"hydra.run.dir={reference}"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and f"resume={reference}" in err
    assert digest(reference) == before


def test_a_sweep_never_writes_into_a_sweep_dir_that_holds_runs(reference, capsys):
    before = digest(reference)
    code = rnnlm_main(["train", "-m", *BASE, "seed=1,2", f"hydra.sweep.dir={reference.parent}"])
    assert code == 2 and "already holds runs" in capsys.readouterr().err
    assert digest(reference) == before


def test_result_records_what_is_needed_to_rerun(reference):
    (row,) = read_rows(reference / "result.csv")
    assert row["overrides"] == " ".join(BASE)
    assert row["seed"] == "141" and row["torch_version"] == torch.__version__
    assert row["rnnlm_version"] and "git_revision" in row


# ---------------------------------------------------------------- interrupt, resume
def wait_for(event, proc, timeout: float = 240) -> None:
    """Poll until ``event()`` is true while ``proc`` lives (a file the run writes says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event():
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("the run did not get there in time")


def wait_for_epochs(run_dir: Path, n: int, proc) -> None:
    metrics = run_dir / "metrics.csv"
    wait_for(lambda: metrics.exists() and len(read_rows(metrics)) >= n, proc)


@pytest.mark.slow
def test_sigterm_after_epoch_then_resume_matches_uninterrupted(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_rnnlm("train", *BASE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epochs(run_dir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (row,) = read_rows(run_dir / "result.csv")
    assert row["status"] == "interrupted"
    interrupted_rows = len(read_rows(run_dir / "metrics.csv"))
    assert interrupted_rows < 3

    handlers = logging.getLogger().handlers[:]
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0  # in this process: only the stop needs another
    assert logging.getLogger().handlers == handlers  # its console and log-file handlers are gone again
    assert val_ppls(run_dir) == val_ppls(reference)  # no duplicated or missing rows
    assert [r["epoch"] for r in read_rows(run_dir / "metrics.csv")] == ["1", "2", "3"]
    (row,) = read_rows(run_dir / "result.csv")
    assert row["status"] == "completed"
    assert row["test_ppl"] == read_rows(reference / "result.csv")[0]["test_ppl"]


@pytest.mark.slow
def test_kill_9_leaves_readable_files_and_resume_continues(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_rnnlm("train", *BASE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_epochs(run_dir, 1, proc)
    wait_for(lambda: read_rows(run_dir / "result.csv")[0]["epochs_run"] == "1", proc)  # epoch 1's last write
    proc.kill()  # in epoch 2
    proc.communicate()
    assert read_rows(run_dir / "metrics.csv") and read_rows(run_dir / "result.csv")
    load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert not list(run_dir.rglob("*.tmp"))
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0  # in this process: only the stop needs another
    assert val_ppls(run_dir) == val_ppls(reference)


def test_resume_refuses_config_changes_and_finished_runs(reference, tmp_path, capsys):
    assert rnnlm_main(["train", f"resume={reference}", "dropout.output=0.1"]) == 2
    assert "cannot change on resume" in capsys.readouterr().err
    assert rnnlm_main(["train", f"resume={reference}"]) == 2
    assert "already completed" in capsys.readouterr().err
    assert rnnlm_main(["train", f"resume={tmp_path}"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


# ------------------------------------------------------------ atomic files, checkpoints
def test_interrupted_csv_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    write_csv(path, [{"a": 1}], ["a"])
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def crash(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(Boom):
        write_csv(path, [{"a": 2}], ["a"])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left


def test_corrupt_or_foreign_checkpoints_get_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(2)}})
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.ones(2))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an rnnlm checkpoint"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "rnnlm-checkpoint-1", "x": Evil()}, pickled)
    with pytest.raises(CheckpointError):  # weights_only: never executes code from the file
        load_checkpoint(pickled)


def test_resume_with_corrupt_checkpoint_is_one_clear_line(reference, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    (run_dir / "result.csv").write_text((run_dir / "result.csv").read_text().replace("completed", "interrupted"))
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and err.count("\n") == 1


# ------------------------------------------------------------- stopping a sweep of worker processes
def test_a_stop_file_stops_the_training_loop_like_a_signal_but_is_not_passed_on(tmp_path):
    """What a job of a joblib sweep does when its parent writes the sweep's stop file."""
    from rnnlm.training.signals import request_stop, stop_on_signals, watch_stop_file

    passed_on = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: passed_on.append(signum))
    try:
        path = tmp_path / ".rnnlm-stop"
        with watch_stop_file(path), stop_on_signals() as stop:
            assert not stop()
            request_stop(path, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while not stop():
                assert time.monotonic() < deadline, "the stop file was not seen"
                time.sleep(0.01)
            assert stop.name == "SIGTERM to the sweep"
        assert passed_on == []  # no signal reached this process: nothing for the handler before
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_stop_file_abandons_an_abortable_section_at_once(tmp_path):
    """The final test is abandoned by a stop file as by a signal (it is redone on resume)."""
    from rnnlm.training.signals import Interrupted, request_stop, stop_on_signals, watch_stop_file

    path = tmp_path / ".rnnlm-stop"
    with watch_stop_file(path), stop_on_signals() as stop:
        with pytest.raises(Interrupted, match="SIGTERM to the sweep"):
            with stop.abortable():
                request_stop(path, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # a long evaluation
                    sum(range(1000))
        assert stop()


def stopped_sweep(tmp_path, *overrides: str):
    """Start a joblib sweep of two long jobs as its own process; return it once both train."""
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *BASE, "trainer.max_epochs=6", "seed=1,2", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *overrides]
    proc = start_rnnlm(*command, cwd=tmp_path)

    def both_training() -> bool:
        jobs = [sweep / job for job in "01"]
        return all((j / "metrics.csv").exists() and read_rows(j / "result.csv")[0]["status"] == "running"
                   and 1 <= len(read_rows(j / "metrics.csv")) < 6 for j in jobs)

    wait_for(both_training, proc)
    return proc, sweep, command


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweeps_parent_stops_every_job_and_resume_auto_completes_them(tmp_path):
    """`kill PID` of a sweep's parent: before, the loky workers trained on to the end of their
    jobs. Now every job saves its checkpoint and ends interrupted, the parent exits 130, and
    the same command with resume=auto continues them, each to the figures of an uninterrupted run."""
    proc, sweep, command = stopped_sweep(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    rows = [read_rows(sweep / job / "result.csv")[0] for job in "01"]
    assert [(r["status"], r["stop_reason"]) for r in rows] == [("interrupted", "interrupted_train")] * 2, rows
    assert all(int(r["epochs_run"]) < 6 for r in rows)
    for job in "01":
        load_checkpoint(sweep / job / "checkpoints" / "last.pt")
        assert "SIGTERM to the sweep during train" in (sweep / job / "rnnlm_train.log").read_text()
    assert not list(sweep.rglob("*.tmp"))

    done = run_rnnlm(*command, "resume=auto", cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in "01":
        (row,) = read_rows(sweep / job / "result.csv")
        assert row["status"] == "completed" and row["epochs_run"] == "6"
        assert [r["epoch"] for r in read_rows(sweep / job / "metrics.csv")] == [str(e) for e in range(1, 7)]
    assert not (sweep / ".rnnlm-stop").exists()
